# shellcheck shell=bash
#
# tests/lib/engine.sh - helpers to run a PRIVATE Docker engine for the tests.
#
# Source this file from bash; it defines functions only and changes no shell
# options of the caller. Main entry points:
#
#   dw_ensure_packages          install docker.io / busybox-static / passwd if missing
#   dw_ensure_user              create the test user (dwtest, uid 4242) if missing
#   dw_engine_start DIR         start containerd + dockerd, all state under DIR
#   dw_engine_stop DIR          remove all containers/images, stop both daemons,
#                               unmount everything under DIR (DIR is kept, so
#                               DIR/dockerd.log can still be read)
#   dw_engine_remove DIR        dw_engine_stop, then delete DIR
#   dw_build_test_image DIR     build + import the busybox image (DW_TEST_IMAGE)
#   dw_untagged_image           import the busybox rootfs again with no tag, print its id
#   dw_docker ARGS...           the docker CLI, always pointed at the private engine
#   dw_tls_make DIR             a throwaway CA, server and client certificates (openssl),
#                               plus a client certificate of a second, untrusted CA
#
# Layout of DIR (everything the engine writes lives here):
#   DIR/.dw-engine              marker "owner_pid owner_starttime" (guards rm -rf)
#   DIR/docker.sock             dockerd API socket   -> DW_TEST_DOCKER_HOST
#   DIR/dockerd.log             dockerd log, --debug (one "Calling GET /..." line per API call)
#   DIR/dockerd.pid, DIR/daemon.json, DIR/data (data-root), DIR/exec (exec-root)
#   DIR/containerd/             private containerd: config.toml, containerd.sock,
#                               root/, state/, containerd.log, containerd.pid
#   DIR/rootfs, DIR/rootfs.tar  busybox root file system of the test image
#   DIR/tls/                    with DW_TEST_TLS=1: server-*.pem, client/ (ca.pem, cert.pem,
#                               key.pem, as in DOCKER_CERT_PATH), wrong-client/ (untrusted cert);
#                               dockerd then also listens on tcp://127.0.0.1:PORT --tlsverify
#                               -> DW_TEST_DOCKER_TLS_HOST, DW_TEST_DOCKER_CERT_PATH,
#                                  DW_TEST_DOCKER_WRONG_CERT_PATH
#
# Why a private containerd: dockerd 20.10 only starts its own ("managed")
# containerd when /run/containerd/containerd.sock does not exist. On a machine
# where the docker.io package started the system containerd it would silently
# share it. So we always start our own and pass --containerd.
#
# Paths outside DIR that the daemons still touch (hard-coded in them):
#   /run/containerd/s/<hash>    containerd 1.6 shim sockets (hash of our socket path,
#                               so no clash with a system containerd)
#   /run/docker/plugins         dockerd plugin discovery dir (empty)
# dw_engine_start notes which of these directories it created and
# dw_engine_stop removes them again if they are empty.

DW_TEST_IMAGE_DEFAULT="dw-test/busybox:latest"
DW_TEST_USER_DEFAULT="dwtest"
DW_TEST_UID_DEFAULT=4242
# Seconds to wait for each daemon to answer.
DW_ENGINE_START_TIMEOUT="${DW_ENGINE_START_TIMEOUT:-60}"

dw_log() { printf '[dw-test] %s\n' "$*" >&2; }
dw_warn() { printf '[dw-test] WARNING: %s\n' "$*" >&2; }
dw_die() {
	printf '[dw-test] ERROR: %s\n' "$*" >&2
	exit 1
}

# Seconds since the epoch with milliseconds, for timings.
dw_now() { date +%s.%3N; }
dw_elapsed() { awk -v a="$1" -v b="$(dw_now)" 'BEGIN { printf "%.1f", b - a }'; }

# ---------------------------------------------------------------------------
# Packages and user
# ---------------------------------------------------------------------------

# Path of the static busybox shipped by Debian's busybox-static.
dw_busybox_path() {
	local p
	for p in /bin/busybox /usr/bin/busybox; do
		[ -x "$p" ] && {
			echo "$p"
			return 0
		}
	done
	return 1
}

dw_busybox_static_installed() {
	dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'install ok installed'
}

# Install what the tests need; runs apt-get update only when something is missing.
dw_ensure_packages() {
	local missing=()
	command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
	command -v docker >/dev/null 2>&1 || missing+=(docker.io)
	command -v containerd >/dev/null 2>&1 || missing+=(containerd)
	command -v runc >/dev/null 2>&1 || missing+=(runc)
	dw_busybox_static_installed || missing+=(busybox-static)
	command -v useradd >/dev/null 2>&1 || missing+=(passwd)
	command -v openssl >/dev/null 2>&1 || missing+=(openssl)
	command -v groupadd >/dev/null 2>&1 || missing+=(passwd)
	command -v tmux >/dev/null 2>&1 || missing+=(tmux) # tests/e2e_ps_top.rs: `top` in a terminal
	command -v strace >/dev/null 2>&1 || missing+=(strace) # tests/e2e_durability.rs: SIGKILL on a chosen system call
	command -v logrotate >/dev/null 2>&1 || missing+=(logrotate) # tests/e2e_durability.rs: rotation under churn
	command -v podman >/dev/null 2>&1 || missing+=(podman)       # tests/e2e_podman.rs: a user's rootless Podman
	command -v newuidmap >/dev/null 2>&1 || missing+=(uidmap)
	# tests/e2e_schema.rs: tests/lib/check_schema.py (python3 on the PATH, else Debian's)
	python3 -c 'import jsonschema' >/dev/null 2>&1 || /usr/bin/python3 -c 'import jsonschema' >/dev/null 2>&1 ||
		missing+=(python3-jsonschema)
	[ "${#missing[@]}" -eq 0 ] && return 0

	# De-duplicate.
	mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
	if [ "$(id -u)" -ne 0 ]; then
		dw_warn "missing packages (${missing[*]}) and not root: cannot install them"
		return 1
	fi
	dw_log "installing: ${missing[*]}"

	# Keep the package scripts from starting the SYSTEM docker/containerd
	# services (standard policy-rc.d trick; only if none is in place already).
	local policy=/usr/sbin/policy-rc.d added_policy=0
	if [ ! -e "$policy" ]; then
		printf '#!/bin/sh\nexit 101\n' >"$policy"
		chmod 755 "$policy"
		added_policy=1
	fi
	local rc=0
	{
		DEBIAN_FRONTEND=noninteractive apt-get update -q &&
			DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
	} >&2 || rc=$?
	[ "$added_policy" -eq 1 ] && rm -f "$policy"
	if [ "$rc" -ne 0 ]; then
		dw_warn "apt-get failed (exit $rc)"
		return 1
	fi
}

# Create the regular test user (default dwtest, uid/gid 4242, home /home/dwtest)
# if it does not exist. Exports DW_TEST_USER, DW_TEST_UID, DW_TEST_GID.
dw_ensure_user() {
	local user="${DW_TEST_USER:-$DW_TEST_USER_DEFAULT}"
	local uid="${DW_TEST_UID:-$DW_TEST_UID_DEFAULT}"
	if ! getent passwd "$user" >/dev/null; then
		local other
		other=$(getent passwd "$uid" | cut -d: -f1) || true
		if [ -n "$other" ]; then
			dw_warn "uid $uid already belongs to '$other'; not creating '$user'"
			return 1
		fi
		[ "$(id -u)" -eq 0 ] || {
			dw_warn "not root: cannot create test user $user"
			return 1
		}
		if ! getent group "$user" >/dev/null; then
			local gopt=(-g "$uid")
			getent group "$uid" >/dev/null && gopt=()
			groupadd "${gopt[@]}" "$user" || {
				dw_warn "groupadd $user failed"
				return 1
			}
		fi
		useradd -u "$uid" -g "$user" -m -d "/home/$user" -s /bin/sh "$user" || {
			dw_warn "useradd $user failed"
			return 1
		}
		dw_log "created test user $user (uid $uid)"
	fi
	DW_TEST_USER="$user"
	DW_TEST_UID="$(id -u "$user")"
	DW_TEST_GID="$(id -g "$user")"
	[ "$DW_TEST_UID" = "$uid" ] || dw_warn "user $user has uid $DW_TEST_UID (expected $uid)"
	export DW_TEST_USER DW_TEST_UID DW_TEST_GID
}

# ---------------------------------------------------------------------------
# cgroups
# ---------------------------------------------------------------------------

# On a pure cgroup v2 host where we sit at the root of our own cgroup namespace
# (i.e. the CI machine is itself a container), the controllers must be enabled
# in the root's cgroup.subtree_control before dockerd (cgroupfs driver) can put
# containers into /docker/<id>. The kernel refuses that while processes live in
# that cgroup ("no internal processes" rule), so - like moby's hack/dind - move
# every process into a child cgroup /init first. Does nothing on cgroup v1 /
# hybrid hosts and on hosts where systemd already delegates the controllers.
dw_cgroup_prepare() {
	local root=/sys/fs/cgroup
	[ -f "$root/cgroup.controllers" ] || return 0 # not cgroup v2 unified
	local own
	own=$(sed -n 's/^0:://p' /proc/self/cgroup)
	[ "$own" = "/" ] || return 0 # inside a slice: the parent already delegates

	local c want=() lacking=0
	read -r -a want <"$root/cgroup.controllers"
	for c in "${want[@]}"; do
		grep -qw "$c" "$root/cgroup.subtree_control" || lacking=1
	done
	[ "$lacking" -eq 1 ] || return 0

	dw_log "cgroup v2: enabling controllers in $root/cgroup.subtree_control"
	if ! printf '+%s ' "${want[@]}" >"$root/cgroup.subtree_control" 2>/dev/null; then
		dw_log "cgroup v2: moving all processes of $root into $root/init (dind-style nesting)"
		mkdir -p "$root/init"
		local pid
		while read -r pid; do
			echo "$pid" >"$root/init/cgroup.procs" 2>/dev/null || true
		done <"$root/cgroup.procs"
		for c in "${want[@]}"; do
			echo "+$c" >"$root/cgroup.subtree_control" 2>/dev/null ||
				dw_warn "cgroup v2: could not enable controller $c"
		done
	fi
}

# ---------------------------------------------------------------------------
# Private engine
# ---------------------------------------------------------------------------

# The docker CLI against the private engine in DIR only (never the system
# engine: -H is always given and DOCKER_* variables are ignored). The client
# config dir also lives in DIR so nothing is written to ~/.docker.
dw_docker_at() {
	local dir="$1"
	shift
	env -u DOCKER_HOST -u DOCKER_CONTEXT -u DOCKER_TLS_VERIFY -u DOCKER_CERT_PATH \
		DOCKER_CONFIG="$dir/docker-config" docker -H "unix://$dir/docker.sock" "$@"
}

# Same, for the engine started last (DW_ENGINE_DIR).
dw_docker() { dw_docker_at "${DW_ENGINE_DIR:?no private engine started}" "$@"; }

# Start time (clock ticks since boot) of a process; empty if it does not exist.
dw_proc_starttime() {
	[ -r "/proc/$1/stat" ] || return 0
	# Field 22; strip "pid (comm) " first since comm may contain spaces.
	sed -E 's/^[0-9]+ \(.*\) //' "/proc/$1/stat" 2>/dev/null | awk '{ print $20 }'
}

# True if PID is alive and its command line contains every given string.
dw_pid_matches() {
	local pid="$1" cmd s
	shift
	[ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
	cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
	for s in "$@"; do
		[[ "$cmd" == *"$s"* ]] || return 1
	done
}

# Send SIG to PID and wait up to TIMEOUT seconds for it to go; SIGKILL after.
# Reaps it if it is our child.
dw_kill_wait() {
	local pid="$1" sig="$2" timeout="$3" i
	kill -s "$sig" "$pid" 2>/dev/null || return 0
	for ((i = 0; i < timeout * 10; i++)); do
		# A zombie still has /proc/PID; treat state Z as gone.
		if [ ! -e "/proc/$pid" ] || grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null; then
			wait "$pid" 2>/dev/null || true
			return 0
		fi
		sleep 0.1
	done
	dw_warn "pid $pid did not stop on SIG$sig within ${timeout}s; sending SIGKILL"
	kill -s KILL "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
}

# containerd shims (and any other process) attached to our containerd socket.
dw_engine_shim_pids() {
	local dir="$1" p
	for p in /proc/[0-9]*; do
		dw_pid_matches "${p#/proc/}" containerd-shim "$dir/containerd/containerd.sock" &&
			echo "${p#/proc/}"
	done
}

# Mount points at or below DIR, deepest first.
dw_mounts_under() {
	local dir="$1"
	awk -v d="$dir" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo |
		awk '{ print length($0) " " $0 }' | sort -rn | cut -d' ' -f2-
}

# Start containerd + dockerd with all their state in DIR. DIR must be absent,
# empty, or a directory left by an earlier dw_engine_start (then it is cleaned
# first, stopping any daemons still running from it). On success sets and
# exports DW_ENGINE_DIR and DW_TEST_DOCKER_HOST and returns 0. On failure it
# prints the tail of the daemon logs, stops what it started and returns 1.
#
# Optional settings (environment):
#   DW_TEST_STORAGE_DRIVER   --storage-driver (default: dockerd's choice, overlay2 or vfs)
#   DW_TEST_CGROUP_DRIVER    cgroup driver (default cgroupfs: cgroup path /docker/<id>)
#   DW_TEST_DOCKERD_ARGS     extra dockerd arguments (word-split)
#   DW_TEST_TLS=1            also listen on tcp://127.0.0.1:PORT with --tlsverify
#                            (certificates from dw_tls_make DIR); PORT is
#                            DW_TEST_TLS_PORT, else a free one from 23760 up
dw_engine_start() {
	local dir="${1:?usage: dw_engine_start DIR}"
	local t0
	t0=$(dw_now)
	case "$dir" in /*) ;; *) dir="$(pwd)/$dir" ;; esac
	dir="${dir%/}"

	if [ "$(id -u)" -ne 0 ]; then
		dw_warn "dw_engine_start needs root"
		return 1
	fi
	local c
	for c in dockerd containerd runc docker; do
		command -v "$c" >/dev/null 2>&1 || {
			dw_warn "$c not found"
			return 1
		}
	done

	# Reuse of a directory: only ours (marker) or an empty one; never one whose
	# owner (another run) is still alive.
	if [ -e "$dir/.dw-engine" ]; then
		if dw_engine_owner_alive "$dir" && [ "$(cut -d' ' -f1 "$dir/.dw-engine")" != "$$" ]; then
			dw_warn "$dir is in use by a running process ($(cat "$dir/.dw-engine")); refusing to use it"
			return 1
		fi
		dw_log "cleaning up stale engine directory $dir"
		dw_engine_remove "$dir"
	elif [ -d "$dir" ] && [ -n "$(ls -A "$dir")" ]; then
		dw_warn "$dir exists, is not empty and was not made by dw_engine_start; refusing to use it"
		return 1
	fi
	mkdir -p "$dir/containerd" "$dir/docker-config"
	echo "$$ $(dw_proc_starttime $$)" >"$dir/.dw-engine"

	# Remember which shared /run directories we create, to remove them later.
	local d
	: >"$dir/.created-dirs"
	for d in /run/containerd /run/containerd/s /run/docker /run/docker/plugins; do
		[ -e "$d" ] || echo "$d" >>"$dir/.created-dirs"
	done

	dw_cgroup_prepare

	# --- containerd -------------------------------------------------------
	local cd="$dir/containerd"
	mkdir -p "$cd/root" "$cd/state" "$cd/tmp" "$cd/opt"
	cat >"$cd/config.toml" <<EOF
# Private containerd for the detect-workloads tests (written by tests/lib/engine.sh).
version = 2
root = "$cd/root"
state = "$cd/state"
temp = "$cd/tmp"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "$cd/containerd.sock"

[ttrpc]
  address = ""

[debug]
  address = ""
  level = "info"

[metrics]
  address = ""

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "$cd/opt"
  [plugins."io.containerd.runtime.v1.linux"]
    runtime_root = "$cd/runc"
EOF
	# setsid: own session, so a Ctrl-C in the terminal reaches only the test
	# script, which then shuts the daemons down in order.
	setsid containerd --config "$cd/config.toml" </dev/null >"$cd/containerd.log" 2>&1 &
	echo $! >"$cd/containerd.pid"

	local i ok=0
	for ((i = 0; i < DW_ENGINE_START_TIMEOUT * 4; i++)); do
		if ! kill -0 "$(cat "$cd/containerd.pid")" 2>/dev/null; then break; fi
		if command -v ctr >/dev/null 2>&1; then
			ctr --address "$cd/containerd.sock" version >/dev/null 2>&1 && ok=1
		else
			[ -S "$cd/containerd.sock" ] && ok=1
		fi
		if [ "$ok" -eq 1 ]; then
			break
		fi
		sleep 0.25
	done
	if [ "$ok" -ne 1 ]; then
		dw_warn "private containerd did not start; last lines of $cd/containerd.log:"
		tail -n 30 "$cd/containerd.log" >&2
		dw_engine_stop "$dir"
		return 1
	fi

	# --- dockerd ----------------------------------------------------------
	# Our own (empty) daemon.json so that /etc/docker/daemon.json is not read;
	# "deprecated-key-path" keeps dockerd 20.10 from creating /etc/docker/key.json.
	printf '{\n  "deprecated-key-path": "%s"\n}\n' "$dir/key.json" >"$dir/daemon.json"
	local args=(
		--config-file "$dir/daemon.json"
		--debug
		--host "unix://$dir/docker.sock"
		--data-root "$dir/data"
		--exec-root "$dir/exec"
		--pidfile "$dir/dockerd.pid"
		--containerd "$cd/containerd.sock"
		--add-runtime nvidia=runc
		--exec-opt "native.cgroupdriver=${DW_TEST_CGROUP_DRIVER:-cgroupfs}"
		# Networking that changes nothing on the host.
		--bridge=none
		--iptables=false
		--ip6tables=false
		--ip-masq=false
		--ip-forward=false
	)
	[ -n "${DW_TEST_STORAGE_DRIVER:-}" ] && args+=(--storage-driver "$DW_TEST_STORAGE_DRIVER")
	local tls_host=""
	if [ "${DW_TEST_TLS:-}" = 1 ]; then
		local port="${DW_TEST_TLS_PORT:-$(dw_free_port 23760)}"
		if [ -n "$port" ] && dw_tls_make "$dir"; then
			tls_host="tcp://127.0.0.1:$port"
			args+=(--host "$tls_host" --tlsverify
				--tlscacert "$dir/tls/ca.pem"
				--tlscert "$dir/tls/server-cert.pem"
				--tlskey "$dir/tls/server-key.pem")
		else
			dw_warn "no TLS listener: no free port or openssl failed"
		fi
	fi
	# shellcheck disable=SC2206 # word splitting wanted
	[ -n "${DW_TEST_DOCKERD_ARGS:-}" ] && args+=($DW_TEST_DOCKERD_ARGS)
	printf '%s\n' "${args[@]}" >"$dir/dockerd.args"

	setsid dockerd "${args[@]}" </dev/null >"$dir/dockerd.log" 2>&1 &
	local dpid=$!
	echo "$dpid" >"$dir/dockerd.launch.pid"

	DW_ENGINE_DIR="$dir"
	DW_TEST_DOCKER_HOST="unix://$dir/docker.sock"
	ok=0
	for ((i = 0; i < DW_ENGINE_START_TIMEOUT * 4; i++)); do
		if ! kill -0 "$dpid" 2>/dev/null; then break; fi
		if dw_docker version >/dev/null 2>&1; then
			ok=1
			break
		fi
		sleep 0.25
	done
	if [ "$ok" -ne 1 ]; then
		dw_warn "private dockerd did not start; last lines of $dir/dockerd.log:"
		tail -n 40 "$dir/dockerd.log" >&2
		dw_engine_stop "$dir"
		unset DW_TEST_DOCKER_HOST DW_ENGINE_DIR
		return 1
	fi
	export DW_ENGINE_DIR DW_TEST_DOCKER_HOST
	if [ -n "$tls_host" ]; then
		DW_TEST_DOCKER_TLS_HOST="$tls_host"
		DW_TEST_DOCKER_CERT_PATH="$dir/tls/client"
		DW_TEST_DOCKER_WRONG_CERT_PATH="$dir/tls/wrong-client"
		export DW_TEST_DOCKER_TLS_HOST DW_TEST_DOCKER_CERT_PATH DW_TEST_DOCKER_WRONG_CERT_PATH
		dw_log "TLS listener: $tls_host (client certificates in $DW_TEST_DOCKER_CERT_PATH)"
	fi
	dw_log "private engine up in $(dw_elapsed "$t0")s: $DW_TEST_DOCKER_HOST" \
		"(dockerd $(dw_docker version -f '{{.Server.Version}}' 2>/dev/null)," \
		"$(dw_docker info -f 'storage {{.Driver}}, cgroup {{.CgroupDriver}} v{{.CgroupVersion}}' 2>/dev/null))"
}

# A TCP port on 127.0.0.1 that nothing listens on, from $1 upwards (20 tries).
dw_free_port() {
	local port="${1:-23760}" i
	for ((i = 0; i < 20; i++, port++)); do
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
			echo "$port"
			return 0
		fi
	done
	return 1
}

# Throwaway certificates in DIR/tls (EC P-256, valid 2 days): a CA; a server
# certificate for 127.0.0.1 and localhost; a client certificate in
# DIR/tls/client (ca.pem, cert.pem, key.pem: what DOCKER_CERT_PATH holds);
# and in DIR/tls/wrong-client the same files with a client certificate of a
# second CA that the engine does not trust.
dw_tls_make() {
	local tls="${1:?usage: dw_tls_make DIR}/tls"
	command -v openssl >/dev/null 2>&1 || {
		dw_warn "openssl not found"
		return 1
	}
	rm -rf "$tls"
	mkdir -p "$tls/client" "$tls/wrong-client"
	(
		set -e
		cd "$tls"
		key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
		ca() { # NAME: NAME.pem, NAME-key.pem
			key "$1-key.pem"
			openssl req -x509 -new -key "$1-key.pem" -days 2 -subj "/CN=dw-test $1" -out "$1.pem" \
				-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
		}
		signed() { # CA OUT_CERT OUT_KEY CN EXTENSIONS
			key "$3"
			openssl req -new -key "$3" -subj "/CN=$4" -out "$2.csr"
			printf '%s\n' "$5" >"$2.ext"
			openssl x509 -req -in "$2.csr" -CA "$1.pem" -CAkey "$1-key.pem" -CAcreateserial \
				-days 2 -extfile "$2.ext" -out "$2" 2>/dev/null
			rm -f "$2.csr" "$2.ext"
		}
		ca ca
		ca other-ca
		signed ca server-cert.pem server-key.pem 127.0.0.1 \
			"subjectAltName=IP:127.0.0.1,DNS:localhost
extendedKeyUsage=serverAuth
basicConstraints=CA:FALSE"
		signed ca client/cert.pem client/key.pem dw-test-client \
			"extendedKeyUsage=clientAuth
basicConstraints=CA:FALSE"
		signed other-ca wrong-client/cert.pem wrong-client/key.pem dw-test-client \
			"extendedKeyUsage=clientAuth
basicConstraints=CA:FALSE"
		cp ca.pem client/ca.pem
		cp ca.pem wrong-client/ca.pem
		chmod 600 ./*-key.pem client/key.pem wrong-client/key.pem
	) || {
		dw_warn "could not make the TLS certificates in $tls"
		return 1
	}
}

# Stop the engine in DIR: remove every container and image on it, stop
# dockerd, then containerd, kill leftover shims tied to our containerd, unmount
# everything under DIR and remove the /run dirs we created (if empty). Safe to
# call more than once, after a failed start, or on a directory left behind by
# a killed run (daemons are found by their pid files and checked by command
# line before being signalled).
dw_engine_stop() {
	local dir="${1:?usage: dw_engine_stop DIR}"
	dir="${dir%/}"
	local cd="$dir/containerd" pid

	# 1. Containers and images, through the API while dockerd is still up.
	pid=$(cat "$dir/dockerd.pid" 2>/dev/null || cat "$dir/dockerd.launch.pid" 2>/dev/null || true)
	if dw_pid_matches "$pid" dockerd "$dir/docker.sock"; then
		local ids
		ids=$(dw_docker_at "$dir" ps -aq 2>/dev/null) || true
		# shellcheck disable=SC2086 # one id per word
		[ -n "$ids" ] && { dw_docker_at "$dir" rm -f -v $ids >/dev/null 2>&1 || true; }
		ids=$(dw_docker_at "$dir" images -aq 2>/dev/null | sort -u) || true
		# shellcheck disable=SC2086
		[ -n "$ids" ] && { dw_docker_at "$dir" rmi -f $ids >/dev/null 2>&1 || true; }

		# 2. dockerd: SIGTERM, it unmounts its layers and exits.
		dw_kill_wait "$pid" TERM 30
	fi

	# 3. Containers whose dockerd died without removing them (killed run).
	#    Preferably through containerd, so that each shim shuts down properly
	#    and removes its socket in /run/containerd/s ...
	pid=$(cat "$cd/containerd.pid" 2>/dev/null || true)
	local sock="$cd/containerd.sock" ns id
	if dw_pid_matches "$pid" containerd "$cd/config.toml" && [ -S "$sock" ]; then
		for ns in $(ctr --address "$sock" namespaces list -q 2>/dev/null); do
			for id in $(ctr --address "$sock" -n "$ns" tasks list -q 2>/dev/null); do
				ctr --address "$sock" -n "$ns" tasks delete --force "$id" >/dev/null 2>&1 || true
			done
			for id in $(ctr --address "$sock" -n "$ns" containers list -q 2>/dev/null); do
				ctr --address "$sock" -n "$ns" containers delete "$id" >/dev/null 2>&1 || true
			done
		done
	fi
	#    ... and with runc directly for what is left (containerd gone too):
	#    kills every process of the container. Roots: DIR/exec/runtime-<name>/<ns>.
	local root
	for root in "$dir"/exec/runtime-*/* "$cd"/runc/*; do
		[ -d "$root" ] || continue
		for id in $(runc --root "$root" list -q 2>/dev/null); do
			runc --root "$root" delete --force "$id" >/dev/null 2>&1 || true
		done
	done

	# 4. containerd, then any shim still attached to it, and the sockets of
	#    such shims (listed in the task bundles' "address" files).
	if dw_pid_matches "$pid" containerd "$cd/config.toml"; then
		dw_kill_wait "$pid" TERM 15
	fi
	for pid in $(dw_engine_shim_pids "$dir"); do
		dw_kill_wait "$pid" KILL 5
	done
	local f addr
	for f in "$cd"/state/io.containerd.runtime.v2.task/*/*/address; do
		[ -f "$f" ] || continue
		addr=$(cat "$f" 2>/dev/null) || continue
		addr="${addr#unix://}"
		case "$addr" in /run/containerd/s/*) [ -S "$addr" ] && rm -f "$addr" ;; esac
	done

	# 5. Mounts under DIR (overlay layers, netns, shm, ...), deepest first;
	#    a few passes for stacked mounts.
	local m _
	for _ in 1 2 3; do
		[ -n "$(dw_mounts_under "$dir")" ] || break
		while read -r m; do
			umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
		done < <(dw_mounts_under "$dir")
	done
	[ -z "$(dw_mounts_under "$dir")" ] || dw_warn "could not unmount: $(dw_mounts_under "$dir" | tr '\n' ' ')"

	# 6. Shared /run directories we created, if nothing else uses them.
	if [ -f "$dir/.created-dirs" ]; then
		local d
		while read -r d; do
			if [ -n "$d" ]; then rmdir "$d" 2>/dev/null || true; fi
		done < <(sort -r "$dir/.created-dirs")
	fi
	rm -f "$dir/dockerd.pid" "$dir/dockerd.launch.pid" "$cd/containerd.pid"
	return 0
}

# Stop the engine and delete DIR (only a directory made by dw_engine_start).
dw_engine_remove() {
	local dir="${1:?usage: dw_engine_remove DIR}"
	dir="${dir%/}"
	[ -d "$dir" ] || return 0
	if [ ! -e "$dir/.dw-engine" ]; then
		dw_warn "$dir has no .dw-engine marker; not removing it"
		return 1
	fi
	dw_podman_stop "$dir"
	dw_engine_stop "$dir"
	# Never cross into a mount that is still there.
	if [ -n "$(dw_mounts_under "$dir")" ]; then
		dw_warn "mounts remain under $dir; leaving it in place"
		return 1
	fi
	rm -rf --one-file-system "$dir"
}

# True if the process that started the engine in DIR (pid and start time
# recorded in DIR/.dw-engine) still exists.
dw_engine_owner_alive() {
	local owner start now
	read -r owner start <"$1/.dw-engine" 2>/dev/null || return 1
	now=$(dw_proc_starttime "$owner")
	[ -n "$now" ] && [ "$now" = "$start" ]
}

# Remove engine directories matching GLOB (default /tmp/dw-test-*) whose owner
# process (recorded in .dw-engine) no longer exists: leftovers of killed runs.
dw_engine_sweep_stale() {
	local glob="${1:-/tmp/dw-test-*}" d
	for d in $glob; do
		[ -f "$d/.dw-engine" ] || continue
		dw_engine_owner_alive "$d" && continue
		dw_log "removing stale engine directory $d (owner pid $(cut -d' ' -f1 "$d/.dw-engine") is gone)"
		dw_engine_remove "$d" || true
	done
}

# ---------------------------------------------------------------------------
# Test image
# ---------------------------------------------------------------------------

# Build DIR/rootfs (static busybox + all its applets in /bin, minimal /etc)
# and DIR/rootfs.tar, and `docker import` it as DW_TEST_IMAGE. Exports
# DW_TEST_IMAGE and DW_TEST_ROOTFS_TAR (tests can `docker import` that tar
# themselves to make more images).
dw_build_test_image() {
	local dir="${1:-${DW_ENGINE_DIR:?no engine}}"
	local image="${DW_TEST_IMAGE:-$DW_TEST_IMAGE_DEFAULT}"
	local bb rootfs="$dir/rootfs"
	bb=$(dw_busybox_path) || {
		dw_warn "busybox not found"
		return 1
	}
	rm -rf "$rootfs"
	mkdir -p "$rootfs"/{bin,etc,tmp,root,proc,sys,dev,home}
	chmod 1777 "$rootfs/tmp"
	cp "$bb" "$rootfs/bin/busybox"
	local a
	for a in $("$bb" --list); do
		[ "$a" = busybox ] || ln -sf busybox "$rootfs/bin/$a"
	done
	for a in sh sleep true cat; do
		[ -L "$rootfs/bin/$a" ] || {
			dw_warn "busybox lacks applet $a"
			return 1
		}
	done
	local user="${DW_TEST_USER:-$DW_TEST_USER_DEFAULT}" uid="${DW_TEST_UID:-$DW_TEST_UID_DEFAULT}"
	local gid="${DW_TEST_GID:-$uid}"
	printf 'root:x:0:0:root:/root:/bin/sh\n%s:x:%s:%s::/tmp:/bin/sh\n' "$user" "$uid" "$gid" >"$rootfs/etc/passwd"
	printf 'root:x:0:\n%s:x:%s:\n' "$user" "$gid" >"$rootfs/etc/group"
	tar --numeric-owner --owner=0 --group=0 -C "$rootfs" -cf "$dir/rootfs.tar" .
	dw_docker import -c 'CMD ["/bin/sh"]' -m 'dw-test busybox' \
		"$dir/rootfs.tar" "$image" >/dev/null || return 1
	DW_TEST_IMAGE="$image"
	DW_TEST_ROOTFS_TAR="$dir/rootfs.tar"
	export DW_TEST_IMAGE DW_TEST_ROOTFS_TAR
}

# Create a new image with no repository:tag from the busybox rootfs and print
# its id (sha256:...). Every call makes a distinct image.
dw_untagged_image() {
	local tar="${DW_TEST_ROOTFS_TAR:-${DW_ENGINE_DIR:?no engine}/rootfs.tar}"
	dw_docker import -c 'CMD ["/bin/sh"]' \
		-c "LABEL dw-test.untagged=$$-$RANDOM-$(date +%s%N)" "$tar"
}
