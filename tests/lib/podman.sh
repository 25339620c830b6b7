# shellcheck shell=bash
# A rootless Podman service of the test user, for tests/e2e_podman.rs, as a
# user of a shared server runs one: Debian's podman, newuidmap (uidmap), a
# subordinate uid range in /etc/subuid and /etc/subgid, and
# `podman system service` listening on
# DIR/podman/run/<uid>/podman/podman.sock (DIR/podman/run stands for
# /run/user). Everything it stores (images, containers, its home) lies under
# DIR/podman; dw_podman_stop removes its containers and ends its processes.
#
# The flags: vfs storage and no network (nothing to mount or configure as
# root), cgroupfs and runc (crun refuses a cgroup v1/v2 hybrid, and a
# rootless container on cgroup v1 gets no cgroup of its own: exactly the
# case the PID-namespace rule of attribution is for).
#
# Exports DW_TEST_PODMAN (a command running podman as the test user with
# those flags) and DW_TEST_PODMAN_RUNTIME_DIR.

# dw_podman_start DIR USER: needs DW_TEST_ROOTFS_TAR (the test image's tar).
dw_podman_start() {
	local dir="${1:?usage: dw_podman_start DIR USER}" user="${2:?usage: dw_podman_start DIR USER}"
	local uid gid home run store
	uid=$(id -u "$user") && gid=$(id -g "$user") || return 1
	command -v podman >/dev/null 2>&1 || { dw_warn "podman is not installed"; return 1; }
	command -v newuidmap >/dev/null 2>&1 || { dw_warn "newuidmap (uidmap) is not installed"; return 1; }
	dw_podman_subids "$user" || return 1
	local p="$dir/podman"
	home="$p/home" run="$p/run/$uid" store="$p/store"
	mkdir -p "$p/run" && chmod 755 "$p" "$p/run" || return 1
	install -d -o "$uid" -g "$gid" -m 700 "$home" "$run" "$run/podman" "$store" || return 1
	cat >"$p/podman" <<-EOF
		#!/bin/sh
		# podman as $user (uid $uid), rootless, with the test's storage and flags.
		cd / && exec setpriv --reuid=$uid --regid=$gid --init-groups -- \\
		    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=$home XDG_RUNTIME_DIR=$run \\
		    XDG_CONFIG_HOME=$home/.config XDG_DATA_HOME=$home/.local/share \\
		    podman --root $store --runroot $run/storage --storage-driver vfs \\
		    --cgroup-manager cgroupfs --events-backend file --runtime runc "\$@"
	EOF
	chmod 755 "$p/podman"
	"$p/podman" import "${DW_TEST_ROOTFS_TAR:?no test image tar}" "${DW_TEST_IMAGE:-dw-test/busybox:latest}" \
		>/dev/null 2>"$p/import.err" || { dw_warn "podman import failed: $(cat "$p/import.err")"; return 1; }
	"$p/podman" system service --time=0 "unix://$run/podman/podman.sock" >"$p/service.log" 2>&1 &
	echo "$!" >"$p/service.pid"
	local i
	for i in $(seq 100); do
		[ -S "$run/podman/podman.sock" ] && break
		sleep 0.1
	done
	[ -S "$run/podman/podman.sock" ] || { dw_warn "podman system service did not listen: $(cat "$p/service.log")"; return 1; }
	# It answers the Docker API: the collector's first call.
	if ! "$p/podman" run --rm --network none "${DW_TEST_IMAGE:-dw-test/busybox:latest}" true >/dev/null 2>"$p/run.err"; then
		dw_warn "a rootless podman container cannot run here: $(cat "$p/run.err")"
		return 1
	fi
	DW_TEST_PODMAN="$p/podman"
	DW_TEST_PODMAN_RUNTIME_DIR="$p/run"
	export DW_TEST_PODMAN DW_TEST_PODMAN_RUNTIME_DIR
	dw_log "rootless podman of $user serving $run/podman/podman.sock"
}

# A subordinate uid and gid range for USER, added when it has none (useradd
# adds one when /etc/subuid exists; it stays with the test user).
dw_podman_subids() {
	local user="$1" file last
	for file in /etc/subuid /etc/subgid; do
		[ -e "$file" ] || touch "$file"
		grep -q "^$user:" "$file" && continue
		last=$(awk -F: '$2 + $3 > m { m = $2 + $3 } END { print m + 0 }' "$file")
		[ "$last" -lt 100000 ] && last=100000
		printf '%s:%s:65536\n' "$user" "$last" >>"$file" || return 1
		dw_log "added $user:$last:65536 to $file"
	done
}

# dw_podman_stop DIR: its containers removed, its service and the user
# namespace's pause process ended (only those it recorded or started).
dw_podman_stop() {
	local p="${1:?usage: dw_podman_stop DIR}/podman" pid
	[ -x "$p/podman" ] || return 0
	timeout 60 "$p/podman" rm -af -t 0 >/dev/null 2>&1 || true
	pid=$(cat "$p/service.pid" 2>/dev/null || true)
	if [ -n "$pid" ] && grep -qs "system" "/proc/$pid/cmdline" && grep -qsF "$p/" "/proc/$pid/cmdline"; then
		dw_kill_wait "$pid" TERM 10
	fi
	# The pause process that holds the user namespace, in the test's runtime folder.
	for pid in $(cat "$p"/run/*/libpod/tmp/pause.pid 2>/dev/null); do
		[ "$(stat -c %u "/proc/$pid" 2>/dev/null)" = "$(stat -c %u "$p/home" 2>/dev/null)" ] &&
			dw_kill_wait "$pid" TERM 10
	done
	rm -f "$p/podman"
}
