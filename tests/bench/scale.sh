#!/usr/bin/env bash
#
# tests/bench/scale.sh - scale benchmark of one scan (issue 5). Not run in CI.
#
# Starts its OWN private Docker engine (tests/lib/engine.sh) in a scratch
# directory, creates N containers there (a few running), starts P host "GPU
# processes" (plain `sleep`s that a scripted nvidia-smi lists), then measures:
#
#   cold scan    no previous state (inventory + event log removed first):
#                every container is inspected
#   steady scan  nothing changed since the previous scan
#   bare list    `curl --unix-socket SOCK http://x/v1.41/containers/json?all=1`,
#                a whole process like the scan, run alternately with the steady
#                scans (the in-process Python list time is shown as well)
#
# For each: median wall time, CPU time (user+system) and peak RSS from wait4()
# (tests/bench/rusage.c, driven by tests/bench/scale.py), and the number of
# Docker API calls from the inventory's scan.collectors.docker.stats.api_calls,
# cross-checked with the "Calling ..." lines the engine's debug log gains
# during the scan.
# Prints one markdown table row per N. Needs root (private dockerd), python3,
# curl and cc.
#
# Usage (from anywhere):
#   sudo tests/bench/scale.sh                         # N=1000
#   DW_BENCH_NS="100 1000 5000" tests/bench/scale.sh  # several N, ascending, one engine
#
# Settings (environment):
#   DW_BENCH_NS          container counts, ascending (default "1000")
#   DW_BENCH_RUNNING     running containers among them (default 10)
#   DW_BENCH_GPU_PROCS   host GPU processes P (default 100)
#   DW_BENCH_RUNS        steady scans / bare calls per N (default 21; median: the
#                        engine's own list time drifts by 10-30 % between runs)
#   DW_BENCH_COLD_RUNS   cold scans per N (default 5; median)
#   DW_BENCH_DIR         scratch directory (default /tmp/dw-bench-$$); removed on exit
#   DW_BENCH_BIN         binary to measure (default: cargo build --release, target/release)
#   DW_BENCH_RESULTS     also append the JSON results here
#   DW_BENCH_BASELINE    a second binary (e.g. an older build) measured the same
#                        way in the same run, each steady scan of it paired with
#                        a bare list call of its own (side-by-side comparisons)
#
# The transient filter runs with its default (min_scans = 2): the cold scan
# sees the P processes as pending, the steady scans report them as host
# processes. The scan config is the default one with the endpoint, the scripted
# nvidia-smi (no nvml) and the paths changed.
#
# Everything it creates (engine, containers, image, sleeps, DIR) is removed on
# exit, also on failure or Ctrl-C.

set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)
# shellcheck source=tests/lib/engine.sh
source tests/lib/engine.sh
# shellcheck source=tests/lib/podman.sh
source tests/lib/podman.sh # dw_engine_remove stops a podman service it finds

NS=${DW_BENCH_NS:-1000}
RUNNING=${DW_BENCH_RUNNING:-10}
P=${DW_BENCH_GPU_PROCS:-100}
RUNS=${DW_BENCH_RUNS:-21}
COLD_RUNS=${DW_BENCH_COLD_RUNS:-5}
DIR=${DW_BENCH_DIR:-/tmp/dw-bench-$$}
ENGINE="$DIR/engine"
WORK="$DIR/work"
sleep_pids=()

cleanup() {
	local rc=$?
	set +e
	trap - EXIT INT TERM
	if [ "${#sleep_pids[@]}" -gt 0 ]; then
		kill "${sleep_pids[@]}" 2>/dev/null
		wait "${sleep_pids[@]}" 2>/dev/null
	fi
	if [ -e "$ENGINE/.dw-engine" ]; then
		dw_log "removing the benchmark engine in $ENGINE (may take a while with many containers)"
		dw_engine_remove "$ENGINE"
	fi
	rm -rf --one-file-system "$WORK"
	rmdir "$DIR" 2>/dev/null
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

[ "$(id -u)" -eq 0 ] || dw_die "needs root (starts a private dockerd)"
command -v curl >/dev/null || dw_die "curl is needed for the bare list call"
command -v python3 >/dev/null || dw_die "python3 is needed"
command -v cc >/dev/null || dw_die "a C compiler (cc) is needed for tests/bench/rusage.c"
[ -e "$DIR" ] && dw_die "$DIR exists; choose another DW_BENCH_DIR"
mkdir -p "$WORK"

if [ -n "${DW_BENCH_BIN:-}" ]; then
	BIN=$DW_BENCH_BIN
else
	dw_log "cargo build --release --bin detect-workloads"
	cargo build --release --bin detect-workloads >&2
	BIN="$repo/target/release/detect-workloads"
fi
[ -x "$BIN" ] || dw_die "no binary at $BIN"
cc -O2 -o "$WORK/rusage" tests/bench/rusage.c || dw_die "cannot compile tests/bench/rusage.c"

dw_ensure_packages || dw_die "docker packages missing"
dw_engine_start "$ENGINE" || dw_die "the benchmark engine did not start"
dw_build_test_image "$ENGINE" || dw_die "could not import the test image"
SOCK="$ENGINE/docker.sock"

# --- P host GPU processes and the scripted nvidia-smi that lists them ----------
: >"$WORK/apps.csv"
for ((i = 0; i < P; i++)); do
	sleep 100000 &
	sleep_pids+=($!)
	printf '%s, %s, GPU-00000000-0000-0000-0000-00000000000%s\n' "$!" $((100 + i)) $((i % 4)) >>"$WORK/apps.csv"
done
# The GPUs' utilisation query (issue 21: the device figure where no
# per-process sample exists) gets the four GPUs at 0 %.
: >"$WORK/gpus.csv"
for ((i = 0; i < 4; i++)); do
	printf 'GPU-00000000-0000-0000-0000-00000000000%s, 0\n' "$i" >>"$WORK/gpus.csv"
done
printf '#!/bin/sh\ncase "$*" in *--query-gpu=*) exec cat %s ;; esac\nexec cat %s\n' \
	"$WORK/gpus.csv" "$WORK/apps.csv" >"$WORK/nvidia-smi"
chmod 755 "$WORK/nvidia-smi"

# One scan configuration per binary ($1: binary, $2: its state directory,
# $3: the file to write): each binary keeps its own state, so that each
# steady scan reads the state its own previous scan wrote (a build with the
# idle stage rates activity against its own counters). The idle stage (issue
# 21) runs where the binary has it, as the default configuration has it.
scan_config() {
	local idle=""
	"$1" plugins 2>/dev/null | grep -qw idle && idle="[[stages.idle]]"
	cat >"$3" <<EOF
# detect-workloads scale benchmark (tests/bench/scale.sh)
[agent]
scan_timeout = "25s"
source = "detect-workloads-bench"

[[collectors.docker]]
endpoint = "unix://$SOCK"
timeout = "20s"

[[collectors.nvidia-smi]]
command = "$WORK/nvidia-smi"
timeout = "5s"

[[collectors.procfs]]

[[stages.classify]]
[[stages.resolve-user]]
[[stages.gpu-devices]]
[[stages.exclude-system]]
[[stages.transient-filter]]
$idle

[[sinks.inventory-file]]
path = "$2/state/inventory.json"
mode = "0644"

[[sinks.event-log]]
path = "$2/log/events.jsonl"
EOF
	"$1" validate --config "$3" >/dev/null || dw_die "benchmark config $3 invalid for $1"
}
scan_config "$BIN" "$WORK" "$WORK/config.toml"
if [ -n "${DW_BENCH_BASELINE:-}" ]; then
	mkdir -p "$WORK/base"
	scan_config "$DW_BENCH_BASELINE" "$WORK/base" "$WORK/base/config.toml"
fi

# --- per N --------------------------------------------------------------------
results="$WORK/results.jsonl"
have=0
for n in $NS; do
	if [ "$n" -gt "$have" ]; then
		t0=$(dw_now)
		start=$((RUNNING < n ? RUNNING : n))
		python3 tests/bench/scale.py create --sock "$SOCK" --image "$DW_TEST_IMAGE" \
			--first "$have" --count $((n - have)) --start "$start" --jobs 4 >/dev/null
		dw_log "created containers $have..$((n - 1)) in $(dw_elapsed "$t0")s"
		have=$n
	elif [ "$n" -lt "$have" ]; then
		dw_die "DW_BENCH_NS must be ascending"
	fi
	dw_log "N=$n: $(dw_docker ps -aq | wc -l) containers, $(dw_docker ps -q | wc -l) running;" \
		"P=$P; load $(cut -d' ' -f1-3 /proc/loadavg)"
	python3 tests/bench/scale.py measure --n "$n" --runs "$RUNS" --cold-runs "$COLD_RUNS" \
		--bin "$BIN" --rusage "$WORK/rusage" --config "$WORK/config.toml" --sock "$SOCK" --log "$ENGINE/dockerd.log" \
		--inventory "$WORK/state/inventory.json" --events "$WORK/log/events.jsonl" \
		--smi "$WORK/nvidia-smi" --work "$WORK" ${DW_BENCH_BASELINE:+--baseline "$DW_BENCH_BASELINE" --baseline-config "$WORK/base/config.toml" --baseline-inventory "$WORK/base/state/inventory.json" --baseline-events "$WORK/base/log/events.jsonl"} |
		tee -a "$results" >&2
	[ -n "${DW_BENCH_RESULTS:-}" ] && tail -n 1 "$results" >>"$DW_BENCH_RESULTS"
done

echo
echo "detect-workloads scale benchmark: $(nproc) CPUs, $(uname -r), dockerd" \
	"$(dw_docker version -f '{{.Server.Version}}' 2>/dev/null), P=$P host GPU processes," \
	"$RUNNING running containers, medians of $RUNS steady / $COLD_RUNS cold runs"
echo
python3 tests/bench/scale.py table "$results"
