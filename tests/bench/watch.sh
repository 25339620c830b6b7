#!/usr/bin/env bash
#
# tests/bench/watch.sh - watch mode's latencies and idle cost (issue 15). Not run in CI.
#
# Starts its OWN private Docker engine (tests/lib/engine.sh) in a scratch
# directory (never the shared one) and measures the release binary's
# `detect-workloads watch` (default timers: interval 30 s, gpu_interval 2 s,
# min_scans 2) with tests/bench/watch.py, the event log polled every 10 ms:
#
#   detection  20 x `docker run -d` returning -> its container_discovered line
#              (target: worst < 1 s)
#   gpu        10 x a `sleep` added to the scripted nvidia-smi's CSV (alone, and
#              as the fallback of an NVML whose library is absent), and 10 x to
#              the fake NVML's scenario (target/release/libfake_nvml.so,
#              FAKE_NVML_FOLLOW=1 so that the kept NVML session sees it) ->
#              its host_gpu_process_discovered line
#              (target: <= min_scans x gpu_interval + 1 s = 5 s)
#   idle       utime+stime of the watch process over 60 s (/proc/PID/stat) with
#              1000 containers (created, 10 running) and 100 GPU processes
#              (100 sleeps the scripted nvidia-smi lists), nothing changing, as
#              a share of one core (target < 1 %)
#
# The memory figure (VmRSS after 10 000 in-process cycles vs after 100) comes
# from the churn test: cargo test --release -p detect-workloads-core --lib
#   ten_thousand -- --nocapture
#
# Needs root (private dockerd) and python3. Prints one JSON line per measure.
# Settings: DW_BENCH_DIR (default /tmp/dw-watchbench-$$), DW_BENCH_BIN (default:
# cargo build --release, target/release), DW_BENCH_CONTAINERS (1000),
# DW_BENCH_GPU_PROCS (100), DW_BENCH_RUNNING (running containers, 10), DW_BENCH_IDLE_S (60), DW_BENCH_ONLY_IDLE=1 (skip the
# latencies), DW_BENCH_PERF=FILE (also `perf record -g` the idle window into FILE).
# Everything it creates (engine, containers, sleeps, DIR) is removed on exit.

set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)
# shellcheck source=tests/lib/engine.sh
source tests/lib/engine.sh
# shellcheck source=tests/lib/podman.sh
source tests/lib/podman.sh # dw_engine_remove stops a podman service it finds

N=${DW_BENCH_CONTAINERS:-1000}
P=${DW_BENCH_GPU_PROCS:-100}
RUNNING=${DW_BENCH_RUNNING:-10}
IDLE_S=${DW_BENCH_IDLE_S:-60}
DIR=${DW_BENCH_DIR:-/tmp/dw-watchbench-$$}
ENGINE="$DIR/engine"
WORK="$DIR/work"
UUID=GPU-56c0b0b8-eb5c-605d-11d6-1bac317b478c
pids=()

cleanup() {
	local rc=$?
	set +e
	trap - EXIT INT TERM
	if [ "${#pids[@]}" -gt 0 ]; then
		kill "${pids[@]}" 2>/dev/null
		wait "${pids[@]}" 2>/dev/null
	fi
	if [ -e "$ENGINE/.dw-engine" ]; then
		dw_log "removing the benchmark engine in $ENGINE"
		dw_engine_remove "$ENGINE"
	fi
	rm -rf --one-file-system "$WORK"
	rmdir "$DIR" 2>/dev/null
	exit "$rc"
}
[ "$(id -u)" -eq 0 ] || dw_die "needs root (starts a private dockerd)"
command -v python3 >/dev/null || dw_die "python3 is needed"
[ -e "$DIR" ] && dw_die "$DIR exists; choose another DW_BENCH_DIR"
mkdir -p "$WORK"
# Only now: a DIR that was there (another run's) is never cleaned up by this one.
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ -n "${DW_BENCH_BIN:-}" ]; then
	BIN=$DW_BENCH_BIN
else
	cargo build --release --bin detect-workloads >&2
	BIN="$repo/target/release/detect-workloads"
fi
cargo build --release -p fake-nvml >&2
NVML="$repo/target/release/libfake_nvml.so"
[ -x "$BIN" ] && [ -f "$NVML" ] || dw_die "no binary at $BIN or no $NVML"

dw_ensure_packages || dw_die "docker packages missing"
dw_engine_start "$ENGINE" || dw_die "the benchmark engine did not start"
dw_build_test_image "$ENGINE" || dw_die "could not import the test image"
SOCK="$ENGINE/docker.sock"
HOST="unix://$SOCK"
# The idle stage (issue 21) where the binary has it, as the default
# configuration runs it.
IDLE_STAGE=""
"$BIN" plugins 2>/dev/null | grep -qw idle && IDLE_STAGE="[[stages.idle]]"

# One watch configuration; $1 names it, $2 is its GPU collector's table.
config() {
	mkdir -p "$WORK/$1"
	cat >"$WORK/$1/config.toml" <<EOC
[agent]
scan_timeout = "25s"
source = "detect-workloads-bench"

[[collectors.docker]]
endpoint = "$HOST"
timeout = "20s"

$2

[[collectors.procfs]]

[[stages.classify]]
[[stages.resolve-user]]
[[stages.gpu-devices]]
[[stages.exclude-system]]
[[stages.transient-filter]]
$IDLE_STAGE

[[sinks.inventory-file]]
path = "$WORK/$1/inventory.json"
mode = "0644"

[[sinks.event-log]]
path = "$WORK/$1/events.jsonl"
EOC
	"$BIN" validate --config "$WORK/$1/config.toml" >/dev/null || dw_die "$1 config invalid"
}

# Starts watch mode on config $1 (extra environment after it); sets WATCH.
watch() {
	local name=$1
	shift
	env "$@" "$BIN" watch --config "$WORK/$name/config.toml" 2>"$WORK/$name/stderr" &
	WATCH=$!
	pids+=("$WATCH")
	for _ in $(seq 300); do
		[ -e "$WORK/$name/inventory.json" ] && return 0
		sleep 0.1
	done
	dw_die "watch ($name) wrote no inventory: $(tail -5 "$WORK/$name/stderr")"
}

stop_watch() {
	kill -TERM "$WATCH"
	wait "$WATCH" || dw_die "watch did not exit 0 on SIGTERM"
}

smi() { # $1: the CSV it prints (the GPU utilisation query: one GPU at 0 %)
	printf '%s, 0\n' "$UUID" >"$WORK/gpus.csv"
	printf '#!/bin/sh\ncase "$*" in *--query-gpu=*) exec cat %s ;; esac\nexec cat %s\n' \
		"$WORK/gpus.csv" "$1" >"$WORK/nvidia-smi-$2"
	chmod 755 "$WORK/nvidia-smi-$2"
	echo "$WORK/nvidia-smi-$2"
}

load() { cut -d' ' -f1-3 /proc/loadavg; }
dw_log "$(nproc) CPUs, $(uname -r), dockerd $(dw_docker version -f '{{.Server.Version}}'), load $(load)"

# --- latencies (few containers) -----------------------------------------------
if [ -z "${DW_BENCH_ONLY_IDLE:-}" ]; then
: >"$WORK/apps.csv"
config lat "[[collectors.nvidia-smi]]
command = \"$(smi "$WORK/apps.csv" lat)\"
timeout = \"5s\""
watch lat
python3 tests/bench/watch.py docker --host "$HOST" --image "$DW_TEST_IMAGE" --events "$WORK/lat/events.jsonl"
python3 tests/bench/watch.py gpu --source nvidia-smi --file "$WORK/apps.csv" \
	--line "{pid}, 10, $UUID" --events "$WORK/lat/events.jsonl"
stop_watch

# NVML configured but absent (no library): the nvidia-smi fallback only.
: >"$WORK/fallback.csv"
config fallback "[[collectors.nvml]]
library = \"$WORK/no-such-libnvidia-ml.so.1\"

[[collectors.nvidia-smi]]
fallback_for = \"nvml\"
command = \"$(smi "$WORK/fallback.csv" fallback)\"
timeout = \"5s\""
watch fallback
python3 tests/bench/watch.py gpu --source "nvidia-smi fallback (NVML absent)" --file "$WORK/fallback.csv" \
	--line "{pid}, 10, $UUID" --events "$WORK/fallback/events.jsonl"
stop_watch

printf 'driver 580.159.04\ngpu %s\n' "$UUID" >"$WORK/scenario"
config nvml "[[collectors.nvml]]
library = \"$NVML\""
watch nvml FAKE_NVML_SCENARIO="$WORK/scenario" FAKE_NVML_FOLLOW=1
python3 tests/bench/watch.py gpu --source "fake NVML" --file "$WORK/scenario" \
	--line "compute {pid} 10485760" --events "$WORK/nvml/events.jsonl"
stop_watch

dw_docker rm -f $(dw_docker ps -aq) >/dev/null
fi

# --- idle cost: N containers, P GPU processes, nothing changing ----------------
t0=$(dw_now)
python3 tests/bench/scale.py create --sock "$SOCK" --image "$DW_TEST_IMAGE" \
	--first 0 --count "$N" --start "$RUNNING" --jobs 4 >/dev/null
dw_log "created $N containers in $(dw_elapsed "$t0")s"
: >"$WORK/idle.csv"
for ((i = 0; i < P; i++)); do
	sleep 100000 &
	pids+=($!)
	printf '%s, %s, %s\n' "$!" $((100 + i)) "$UUID" >>"$WORK/idle.csv"
done
config idle "[[collectors.nvidia-smi]]
command = \"$(smi "$WORK/idle.csv" idle)\"
timeout = \"5s\""
watch idle
# Settled: the P processes confirmed (min_scans polls), the first scan's work done.
sleep 10
dw_log "idle: $(python3 -c 'import json,sys; i=json.load(open(sys.argv[1])); print(len(i["containers"]), "containers,", len(i["host_processes"]), "host processes")' "$WORK/idle/inventory.json"), load $(load)"
if [ -n "${DW_BENCH_PERF:-}" ]; then
	perf record -g -o "$DW_BENCH_PERF" -p "$WATCH" -- sleep "$IDLE_S" 2>/dev/null &
	pids+=($!)
fi
python3 tests/bench/watch.py idle --pid "$WATCH" --window "$IDLE_S"
stop_watch
