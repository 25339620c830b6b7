#!/usr/bin/env bash
#
# tests/run.sh - the project's single test command (CI runs `bash tests/run.sh`
# from the repository root, as root, with CI=true).
#
#  1. installs what is missing (docker.io, busybox-static, passwd) with apt-get;
#  2. starts a PRIVATE Docker engine (containerd + dockerd) under $DW_TEST_DIR -
#     the system Docker daemon, its socket and its containers are never used;
#  3. imports a tiny busybox image, dw-test/busybox:latest, with no registry;
#  4. creates the regular test user dwtest (uid 4242) if missing;
#  5. exports for the tests:
#       DW_TEST_DOCKER_HOST   unix://$DW_TEST_DIR/docker.sock  (only when the engine is up)
#       DW_TEST_DOCKER_CAN_RUN 1 if containers can be started here, else 0
#       DW_TEST_IMAGE         dw-test/busybox:latest
#       DW_TEST_ROOTFS_TAR    the image's root file system (docker import it for more images)
#       DW_TEST_USER / DW_TEST_UID / DW_TEST_GID   dwtest / 4242 / 4242
#       DW_TEST_DIR           scratch directory of this run (engine state, logs)
#       DW_TEST_DOCKER_TLS_HOST        tcp://127.0.0.1:PORT: the same engine over TLS (--tlsverify)
#       DW_TEST_DOCKER_CERT_PATH       its client certificates (ca.pem, cert.pem, key.pem)
#       DW_TEST_DOCKER_WRONG_CERT_PATH a client certificate of a CA the engine does not trust
#  6. runs cargo fmt --check, clippy -D warnings, and cargo test --release;
#  7. on exit (success, failure, Ctrl-C) removes every container and image of
#     the private engine, stops it, unmounts what it mounted and removes $DW_TEST_DIR.
#
# Environment switches:
#   DW_TEST_DIR=/path        scratch directory (default /tmp/dw-test-$$)
#   DW_TEST_ENGINE_ONLY=1    steps 1-5 + a docker smoke test + clean-up; no cargo
#   DW_TEST_KEEP=1           leave the engine running and $DW_TEST_DIR in place;
#                            stop it later with `bash tests/run.sh --stop DIR`
#                            (DIR as printed: "leaving the engine running in DIR")
#
# `bash tests/run.sh --stop DIR` stops the kept engine of DIR, removes its
# containers and images, unmounts what it mounted and removes DIR; nothing else.
#   CI=true                  a private engine that cannot start is an error
#                            (otherwise: warning, docker tests are skipped)
# Engine options (DW_TEST_STORAGE_DRIVER, DW_TEST_CGROUP_DRIVER,
# DW_TEST_DOCKERD_ARGS) are described in tests/lib/engine.sh.

set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=tests/lib/engine.sh
source tests/lib/engine.sh
# shellcheck source=tests/lib/podman.sh
source tests/lib/podman.sh

if [ "${1:-}" = --stop ]; then
	dir="${2:?usage: bash tests/run.sh --stop DIR (the directory DW_TEST_KEEP=1 left)}"
	[ -e "$dir/.dw-engine" ] || dw_die "$dir holds no engine of tests/run.sh (no .dw-engine marker)"
	dw_log "stopping the engine kept in $dir"
	dw_engine_remove "$dir"
	exit 0
fi

is_ci() { [ "${CI:-}" = true ] || [ "${CI:-}" = 1 ]; }

DW_TEST_DIR="${DW_TEST_DIR:-/tmp/dw-test-$$}"
export DW_TEST_DIR

# --- clean-up, whatever happens ---------------------------------------------
cleanup() {
	local rc=$?
	set +e
	trap - EXIT INT TERM
	if [ "${DW_TEST_KEEP:-}" = 1 ]; then
		dw_log "DW_TEST_KEEP=1: leaving the engine running in $DW_TEST_DIR; stop it with: bash tests/run.sh --stop $DW_TEST_DIR"
	elif [ -e "$DW_TEST_DIR/.dw-engine" ]; then
		# Only our own engine (or an orphan), never one of a concurrent run.
		if [ "$(cut -d' ' -f1 "$DW_TEST_DIR/.dw-engine")" = "$$" ] || ! dw_engine_owner_alive "$DW_TEST_DIR"; then
			dw_log "cleaning up $DW_TEST_DIR"
			dw_engine_remove "$DW_TEST_DIR"
		fi
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Leftovers of earlier runs that were killed before they could clean up.
[ "$(id -u)" -eq 0 ] && dw_engine_sweep_stale "/tmp/dw-test-*"

# --- 1. packages ---------------------------------------------------------------
if ! dw_ensure_packages; then
	is_ci && dw_die "could not install the packages the tests need"
	dw_warn "continuing without them; docker tests will be skipped"
fi

# --- 4. test user ----------------------------------------------------------------
if ! dw_ensure_user; then
	is_ci && dw_die "could not create the test user"
	dw_warn "no test user; tests needing one will be skipped"
fi

# --- 2. private engine ---------------------------------------------------------
engine_up=0
# The engine also listens on loopback TCP with TLS (throwaway certificates).
export DW_TEST_TLS="${DW_TEST_TLS:-1}"
if dw_engine_start "$DW_TEST_DIR"; then
	engine_up=1
	if [ -z "${DW_TEST_DOCKER_TLS_HOST:-}" ] && is_ci; then
		dw_die "the private Docker engine has no TLS listener (see above)"
	fi
elif is_ci; then
	dw_die "the private Docker engine did not start (see above)"
else
	dw_warn "the private Docker engine did not start; docker tests will be skipped"
	unset DW_TEST_DOCKER_HOST
fi

# --- 3. test image -------------------------------------------------------------
if [ "$engine_up" -eq 1 ]; then
	dw_build_test_image "$DW_TEST_DIR" || dw_die "could not import the test image"
	dw_log "test image $DW_TEST_IMAGE ready"

	# Can containers actually run on this machine (not just be created)?
	if dw_docker run --rm --network none "$DW_TEST_IMAGE" true >/dev/null 2>"$DW_TEST_DIR/run-check.err"; then
		DW_TEST_DOCKER_CAN_RUN=1
	else
		DW_TEST_DOCKER_CAN_RUN=0
		is_ci && dw_die "containers cannot be started on the private engine: $(cat "$DW_TEST_DIR/run-check.err")"
		dw_warn "containers cannot be started here: $(cat "$DW_TEST_DIR/run-check.err")"
	fi
	export DW_TEST_DOCKER_HOST DW_TEST_DOCKER_CAN_RUN

	# A rootless Podman service of the test user (tests/e2e_podman.rs).
	if [ -n "${DW_TEST_USER:-}" ] && dw_podman_start "$DW_TEST_DIR" "$DW_TEST_USER"; then
		:
	elif is_ci; then
		dw_die "the test user's rootless Podman service did not start (see above)"
	else
		dw_warn "no rootless Podman service; tests/e2e_podman.rs will be skipped"
	fi
fi

# --- DW_TEST_ENGINE_ONLY: smoke test of the engine, then clean up -------------
# Checks everything the Rust tests rely on; any failure exits non-zero.
smoke_test() {
	local img="$DW_TEST_IMAGE" id pid out
	check() {
		local what="$1"
		shift
		if "$@"; then dw_log "ok: $what"; else dw_die "smoke test failed: $what"; fi
	}

	dw_docker run --rm "$img" sh -c 'cat /proc/self/cgroup >/dev/null && true' ||
		dw_die "smoke test failed: docker run --rm"
	dw_log "ok: run --rm (sh, cat, true)"

	# A running container: create, start, host view of its process, stop, remove.
	id=$(dw_docker create --name dw-smoke-sleep "$img" sleep 300)
	dw_docker start dw-smoke-sleep >/dev/null
	pid=$(dw_docker inspect -f '{{.State.Pid}}' "$id")
	check "container running (host pid $pid)" [ "$(dw_docker inspect -f '{{.State.Running}}' "$id")" = true ]
	out=$(cat "/proc/$pid/cgroup")
	dw_log "host /proc/$pid/cgroup:"
	printf '[dw-test]     %s\n' "${out//$'\n'/$'\n'[dw-test]     }" >&2
	check "container id in host /proc/PID/cgroup" grep -q "$id" <<<"$out"
	dw_docker stop -t 1 "$id" >/dev/null
	check "stopped" [ "$(dw_docker inspect -f '{{.State.Status}}' "$id")" = exited ]
	dw_docker rm "$id" >/dev/null
	dw_log "ok: create/start/stop/rm"

	# --user with a numeric uid and with the user name (in the image's /etc/passwd).
	out=$(dw_docker run --rm --user 4242 "$img" id -u)
	check "--user 4242 (id -u = $out)" [ "$out" = 4242 ]
	if [ -n "${DW_TEST_USER:-}" ]; then
		id=$(dw_docker run -d --user "$DW_TEST_USER" "$img" sleep 300)
		pid=$(dw_docker inspect -f '{{.State.Pid}}' "$id")
		check "--user $DW_TEST_USER: host process uid $DW_TEST_UID" \
			grep -Eq "^Uid:\s+$DW_TEST_UID\s" "/proc/$pid/status"
		dw_docker rm -f "$id" >/dev/null
	fi

	# Runtime nvidia (= runc here): can even run.
	id=$(dw_docker run -d --runtime nvidia "$img" sleep 300)
	check "--runtime nvidia running" [ "$(dw_docker inspect -f '{{.HostConfig.Runtime}} {{.State.Running}}' "$id")" = "nvidia true" ]
	dw_docker rm -f "$id" >/dev/null

	# --gpus all: can be created (starting needs the NVIDIA container toolkit).
	id=$(dw_docker create --gpus all "$img" sleep 300)
	check "--gpus all created" [ -n "$(dw_docker inspect -f '{{range .HostConfig.DeviceRequests}}{{.Count}}{{end}}' "$id")" ]
	if dw_docker start "$id" >/dev/null 2>&1; then
		dw_log "note: --gpus all container even started"
	else
		dw_log "ok: --gpus all container cannot be started without a GPU (expected)"
	fi

	# --device mapping to /dev/nvidia0: created and started.
	id=$(dw_docker create --device /dev/null:/dev/nvidia0 "$img" sleep 300)
	check "--device /dev/null:/dev/nvidia0 created" \
		[ "$(dw_docker inspect -f '{{range .HostConfig.Devices}}{{.PathInContainer}}{{end}}' "$id")" = /dev/nvidia0 ]
	dw_docker start "$id" >/dev/null
	check "--device container started, /dev/nvidia0 inside" dw_docker exec "$id" test -c /dev/nvidia0

	# An image with no repository:tag.
	id=$(dw_untagged_image)
	check "untagged image $id" [ "$(dw_docker image inspect -f '{{len .RepoTags}}' "$id")" = 0 ]

	dw_log "engine smoke test passed ($(dw_docker ps -aq | wc -l) containers, $(dw_docker images -aq | wc -l) images left for clean-up)"
}

if [ "${DW_TEST_ENGINE_ONLY:-}" = 1 ]; then
	if [ "$engine_up" -eq 1 ]; then
		smoke_test
	else
		dw_warn "engine not running: nothing to smoke-test"
	fi
	exit 0
fi

# --- Prometheus tools (tests/e2e_prometheus.rs) -----------------------------------
# promtool (Debian's `prometheus`) checks the metrics file and runs the rules'
# tests; a real node_exporter serves the file. Installed when missing, without
# letting the packages start their system services; their paths are exported
# as DW_TEST_PROMTOOL and DW_TEST_NODE_EXPORTER. Under CI a missing tool fails
# those tests (they are skipped elsewhere).
dw_ensure_prometheus_tools() {
	local missing=() policy=/usr/sbin/policy-rc.d added_policy=0 rc=0
	command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
	command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
	command -v prometheus-node-exporter >/dev/null 2>&1 || missing+=(prometheus-node-exporter)
	[ "${#missing[@]}" -eq 0 ] && return 0
	[ "$(id -u)" -eq 0 ] || { dw_warn "missing ${missing[*]} and not root"; return 1; }
	dw_log "installing: ${missing[*]}"
	if [ ! -e "$policy" ]; then
		printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && added_policy=1
	fi
	{
		DEBIAN_FRONTEND=noninteractive apt-get update -q &&
			DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
	} >&2 || rc=$?
	[ "$added_policy" -eq 1 ] && rm -f "$policy"
	return "$rc"
}
if ! dw_ensure_prometheus_tools; then
	is_ci && dw_die "could not install promtool and prometheus-node-exporter"
	dw_warn "Prometheus tools missing; tests/e2e_prometheus.rs will skip what needs them"
fi
DW_TEST_PROMTOOL="$(command -v promtool || true)"
DW_TEST_NODE_EXPORTER="$(command -v prometheus-node-exporter || true)"
# The server itself (tests/e2e_fleet.rs scrapes three watch instances with it).
DW_TEST_PROMETHEUS="$(command -v prometheus || true)"
export DW_TEST_PROMTOOL DW_TEST_NODE_EXPORTER DW_TEST_PROMETHEUS

# --- 6. the Rust checks ------------------------------------------------------------
dw_log "cargo fmt --all --check"
cargo fmt --all --check
dw_log "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
dw_log "cargo doc --workspace --no-deps (RUSTDOCFLAGS=-D warnings)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps
# Tests that need what this script sets up (the engine, the test user, the
# Prometheus tools, root) are #[ignore]d with the reason, so that a plain
# `cargo test` lists them as ignored; here they run, and a missing
# prerequisite fails them. Without an engine (allowed outside CI only) they
# stay ignored, and the summary says how many.
test_args=(--workspace --release --no-fail-fast)
# The package's own tests (tests/e2e_package.rs, named deb_package_*) need
# the package: they run once it is built, in step 10.
if [ "$engine_up" -eq 1 ]; then
	dw_log "cargo test ${test_args[*]} -- --include-ignored --skip deb_package_"
	cargo test "${test_args[@]}" -- --include-ignored --skip deb_package_ 2>&1
else
	dw_warn "no private engine: the tests that need it are left ignored"
	cargo test "${test_args[@]}" 2>&1
fi

# --- 8. systemd units (issue 10, point 9): verify, and a sandbox rated "OK" ----
# `systemd-analyze security --offline=true` must rate the service 3.0 or lower;
# `systemd-analyze verify` must pass on the service and the timer.
dw_log "systemd units: systemd-analyze verify and security (exposure at most 3.0)"
if ! command -v systemd-analyze >/dev/null 2>&1; then
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends systemd >/dev/null ||
		dw_die "systemd-analyze is missing and Debian's systemd package could not be installed"
fi
units_dir=$(mktemp -d /tmp/dw-units.XXXXXX)
cp config/systemd/detect-workloads.service config/systemd/detect-workloads.timer "$units_dir/"
# verify needs ExecStart's binary to exist: the one just built.
unit_bin="$PWD/target/release/detect-workloads"
[ -x "$unit_bin" ] || unit_bin=/bin/true
sed -i "s|^ExecStart=.*|ExecStart=$unit_bin|" "$units_dir/detect-workloads.service"
cp config/systemd/detect-workloads-watch.service "$units_dir/"
sed -i "s|^ExecStart=[^ ]*|ExecStart=$unit_bin|" "$units_dir/detect-workloads-watch.service"
# It exits 0 on settings it ignores, with a warning: any output is a failure.
verify_rc=0
verify_out=$(cd "$units_dir" && systemd-analyze verify ./detect-workloads.service ./detect-workloads.timer ./detect-workloads-watch.service 2>&1) || verify_rc=$?
rm -rf "$units_dir"
if [ "$verify_rc" -ne 0 ] || [ -n "$verify_out" ]; then
	printf '%s\n' "$verify_out" >&2
	dw_die "systemd-analyze verify failed on config/systemd/ (exit $verify_rc)"
fi
for unit in detect-workloads.service detect-workloads-watch.service; do
	exposure=$(systemd-analyze security --offline=true --no-pager "config/systemd/$unit" 2>&1 |
		sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
	[ -n "$exposure" ] || dw_die "systemd-analyze security printed no exposure level for $unit"
	awk -v e="$exposure" 'BEGIN { exit !(e <= 3.0) }' ||
		dw_die "config/systemd/$unit is rated $exposure by systemd-analyze security; at most 3.0 (OK) is required"
	dw_log "ok: $unit exposure $exposure (at most 3.0)"
	# With the packaged drop-in (node_exporter's textfile directory writable):
	# still at most 3.0 (the path is optional, "-": no node_exporter, no failure).
	merged=$(mktemp -d /tmp/dw-units.XXXXXX)
	rw=$(grep '^ReadWritePaths=-/' config/systemd/detect-workloads.service.d/prometheus-textfile.conf) ||
		dw_die "the textfile drop-in has no optional ReadWritePaths="
	sed "/^UMask=/a $rw" "config/systemd/$unit" >"$merged/$unit"
	exposure=$(systemd-analyze security --offline=true --no-pager "$merged/$unit" 2>&1 |
		sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
	rm -rf "$merged"
	awk -v e="${exposure:-99}" 'BEGIN { exit !(e <= 3.0) }' ||
		dw_die "$unit with the textfile drop-in is rated ${exposure:-nothing}; at most 3.0 is required"
	dw_log "ok: $unit with prometheus-textfile.conf exposure $exposure (at most 3.0)"
done
dw_log "ok: systemd units verified"

# --- 9. dependencies (issue 11, point 4): none declared and unused --------------
command -v cargo-machete >/dev/null 2>&1 || cargo install --locked --quiet cargo-machete
dw_log "cargo machete (unused dependencies)"
cargo machete
dw_log "duplicate crate versions (cargo tree -d; see README, Architecture):"
cargo tree -d -e normal --depth 0 2>/dev/null | grep -E '^[a-z]' | sort -u >&2 || true

# --- 10. the Debian package (issue 15, point 4; issue 23, point 13) -----------------
# Built from the release binary the tests just used, with the man pages and
# shell completions that binary generates from its command-line definition;
# its contents are checked, lintian must report no error and no warning
# (docs/deploying.md, "lintian", explains the two overrides), and
# tests/e2e_package.rs runs its maintainer scripts, completions, man pages and
# logrotate file for real (about 5 s; lintian about 25 s).
dw_log "Debian package: cargo deb, dpkg-deb --contents, lintian, tests/e2e_package.rs"
command -v cargo-deb >/dev/null 2>&1 || cargo install --locked --quiet cargo-deb
pkg_tools=()
command -v lintian >/dev/null 2>&1 || pkg_tools+=(lintian)
command -v logrotate >/dev/null 2>&1 || pkg_tools+=(logrotate)
command -v man >/dev/null 2>&1 || pkg_tools+=(man-db)
if [ "${#pkg_tools[@]}" -gt 0 ]; then
	DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${pkg_tools[@]}" >&2 ||
		dw_die "could not install ${pkg_tools[*]}"
fi
rm -rf target/package-assets
target/release/detect-workloads generate-assets target/package-assets ||
	dw_die "the binary could not write its man pages and completions"
deb_dir="$DW_TEST_DIR/deb"
mkdir -p "$deb_dir"
cargo deb --no-build --output "$deb_dir" >&2
deb=$(ls "$deb_dir"/detect-workloads_*.deb)
contents=$(dpkg-deb --contents "$deb")
for path in usr/bin/detect-workloads etc/ds01/detect-workloads.toml \
	lib/systemd/system/detect-workloads.service lib/systemd/system/detect-workloads.timer \
	lib/systemd/system/detect-workloads-watch.service \
	lib/systemd/system/detect-workloads.service.d/prometheus-textfile.conf \
	lib/systemd/system/detect-workloads-watch.service.d/prometheus-textfile.conf \
	usr/share/doc/detect-workloads/README.md usr/share/doc/detect-workloads/SECURITY.md \
	usr/share/doc/detect-workloads/LICENSE usr/share/doc/detect-workloads/copyright \
	usr/share/doc/detect-workloads/docs/formats.md \
	usr/share/doc/detect-workloads/examples/prometheus/detect-workloads.rules.yml \
	usr/share/doc/detect-workloads/examples/grafana/detect-workloads.json; do
	grep -q " \./$path\$" <<<"$contents" || dw_die "the package lacks /$path"
done
for doc in docs/*.md; do
	grep -q " \./usr/share/doc/detect-workloads/$doc\$" <<<"$contents" ||
		dw_die "the package lacks /usr/share/doc/detect-workloads/$doc"
done
dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles | grep -qx /etc/ds01/detect-workloads.toml ||
	dw_die "the default configuration is not a conffile"
lintian_out=$(lintian --fail-on error,warning --tag-display-limit 0 "$deb" 2>&1) || {
	printf '%s\n' "$lintian_out" >&2
	dw_die "lintian reports errors or warnings on $(basename "$deb")"
}
[ -n "$lintian_out" ] && printf '%s\n' "$lintian_out" >&2
dw_log "ok: $(basename "$deb") holds what it should; lintian reports no error and no warning"
DW_TEST_DEB="$deb"
export DW_TEST_DEB
dw_log "cargo test --release --test e2e_package -- --include-ignored"
cargo test --release --test e2e_package -- --include-ignored 2>&1
dw_log "all checks passed"
