#!/usr/bin/env bash
#
# tests/bench/callgrind.sh - instructions of one steady oneshot scan (issue 19,
# point 6). Not run in CI.
#
# On an engine that is already running (DW_TEST_DOCKER_HOST, e.g. the private
# engine of `DW_TEST_KEEP=1 DW_TEST_ENGINE_ONLY=1 tests/run.sh`), creates N
# containers named dwcost-<i> (one label each, R of them running `sleep`)
# unless they are there already, writes a config with the docker endpoint, the
# procfs collector, the built-in default stages (none listed), an inventory
# file and an event log in a scratch directory and no GPU collector, runs one
# scan to settle the state (a second one so that nothing is new any more),
# then runs a steady scan under `valgrind --tool=callgrind` and prints its
# total instruction count (Ir). The count is the same whatever the machine's
# load, to within about 0.1 % (thread scheduling).
#
# Usage (from anywhere):
#   source /tmp/dwenv.sh; tests/bench/callgrind.sh
#
# Settings (environment):
#   DW_TEST_DOCKER_HOST  the engine (unix:///...), required
#   DW_TEST_IMAGE        image of the containers (default dw-test/busybox:latest)
#   DW_COST_N            containers (default 1000)
#   DW_COST_RUNNING      running containers among them (default 10)
#   DW_COST_BIN          binary (default: cargo build --release, target/release)
#   DW_COST_DIR          scratch directory (default /tmp/dw-cost-$$; removed on
#                        exit unless DW_COST_KEEP=1)
#   DW_COST_OUT          also keep the callgrind output here (for callgrind_annotate)
#   DW_COST_KEEP=1       keep the dwcost-* containers and the directory
#
# Only the containers named dwcost-* are created and removed; the engine is
# neither started nor stopped. Other containers on the engine are scanned too
# and count in the figure.

set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)

HOST=${DW_TEST_DOCKER_HOST:?DW_TEST_DOCKER_HOST must name the engine}
IMAGE=${DW_TEST_IMAGE:-dw-test/busybox:latest}
N=${DW_COST_N:-1000}
RUNNING=${DW_COST_RUNNING:-10}
DIR=${DW_COST_DIR:-/tmp/dw-cost-$$}
docker=(docker -H "$HOST")

cleanup() {
	local rc=$?
	set +e
	trap - EXIT INT TERM
	if [ "${DW_COST_KEEP:-0}" != 1 ]; then
		local ids
		ids=$("${docker[@]}" ps -aq --filter name=^dwcost-)
		# shellcheck disable=SC2086
		[ -n "$ids" ] && "${docker[@]}" rm -f $ids >/dev/null
		rm -rf --one-file-system "$DIR"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log() { printf 'callgrind.sh: %s\n' "$*" >&2; }
command -v valgrind >/dev/null || { log "valgrind is needed"; exit 1; }

if [ -n "${DW_COST_BIN:-}" ]; then
	BIN=$DW_COST_BIN
else
	log "cargo build --release --bin detect-workloads"
	cargo build --release --bin detect-workloads >&2
	BIN="$repo/target/release/detect-workloads"
fi
[ -x "$BIN" ] || { log "no binary at $BIN"; exit 1; }
mkdir -p "$DIR"

# --- the containers (kept when they are there already) --------------------------
have=$("${docker[@]}" ps -aq --filter name=^dwcost- | wc -l)
if [ "$have" -ne "$N" ]; then
	if [ "$have" -gt 0 ]; then
		# shellcheck disable=SC2046
		"${docker[@]}" rm -f $("${docker[@]}" ps -aq --filter name=^dwcost-) >/dev/null
	fi
	log "creating $N containers ($RUNNING running)"
	seq 0 $((N - 1)) | xargs -P 4 -I{} "${docker[@]}" create --name dwcost-{} \
		--label dwcost.index={} "$IMAGE" sleep 100000 2>&1 >/dev/null |
		grep -v "IPv4 forwarding is disabled" >&2 || true
	seq 0 $((RUNNING - 1)) | xargs -I{} "${docker[@]}" start dwcost-{} >/dev/null
	have=$("${docker[@]}" ps -aq --filter name=^dwcost- | wc -l)
	[ "$have" -eq "$N" ] || { log "only $have of $N containers were created"; exit 1; }
	# A scan asks for the engine's events from a second before the previous
	# one: the creations must be older than that, or the measured scan
	# inspects the containers they name again.
	sleep 3
fi

cat >"$DIR/config.toml" <<EOF
# detect-workloads instruction count (tests/bench/callgrind.sh)
[agent]
scan_timeout = "120s"
source = "detect-workloads-cost"

[[collectors.docker]]
endpoint = "$HOST"
timeout = "100s"

[[collectors.procfs]]

[[sinks.inventory-file]]
path = "$DIR/state/inventory.json"
mode = "0644"

[[sinks.event-log]]
path = "$DIR/log/events.jsonl"
EOF
"$BIN" validate --config "$DIR/config.toml" >/dev/null

log "settling the state (two scans)"
"$BIN" --config "$DIR/config.toml" >/dev/null
"$BIN" --config "$DIR/config.toml" >/dev/null

out=${DW_COST_OUT:-$DIR/callgrind.out}
valgrind --tool=callgrind --callgrind-out-file="$out" "$BIN" --config "$DIR/config.toml" \
	>/dev/null 2>"$DIR/valgrind.log" || { cat "$DIR/valgrind.log" >&2; exit 1; }
ir=$(sed -n 's/^totals: *\([0-9]*\).*/\1/p' "$out")
[ -n "$ir" ] || ir=$(sed -n 's/^summary: *\([0-9]*\).*/\1/p' "$out")
# Steady: the list and the events, nothing inspected (an engine shared with
# others may have had events meanwhile: run again).
calls=$(grep -o '"api_calls":[0-9]*,"inspects":[0-9]*' "$DIR/state/inventory.json" | head -n 1)
printf 'steady scan, N=%s (%s running): %s instructions (Ir); docker %s\n' "$N" "$RUNNING" "$ir" "$calls"
[ "$calls" = '"api_calls":2,"inspects":0' ] || log "not a steady scan (inspects or more calls): the figure is not comparable"
