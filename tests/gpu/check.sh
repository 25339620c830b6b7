#!/usr/bin/env bash
#
# tests/gpu/check.sh - checks the GPU collectors of detect-workloads against a
# real NVIDIA GPU (no Docker needed). Run it as root on a machine with the
# NVIDIA driver, nvidia-smi and PyTorch with CUDA:
#
#     bash tests/gpu/check.sh [BINARY]      # default: target/release/detect-workloads
#
# It starts two CUDA processes holding GPU memory, one as root and one as the
# user dwgpu (created if missing, removed again if it created it), waits until
# nvidia-smi lists both, and then:
#   1. scans through NVML (nvml collector, nvidia-smi as its fallback, procfs,
#      the stages, an inventory file in a temporary directory, transient-filter
#      min_scans = 1) and checks that both PIDs are in host_processes with the
#      right user, the GPU UUID nvidia-smi reports and memory within 5 % of
#      `nvidia-smi --query-compute-apps`'s;
#   2. scans again with the NVML library pointing nowhere and checks that the
#      nvidia-smi fallback reports the same processes (scan.collectors.nvml.ok
#      false, scan.collectors.nvidia-smi ok and not skipped);
#   3. runs each configuration 10 times and prints the median collector
#      duration_ms of each path and their ratio.
# It prints one PASS/FAIL line per check, kills what it started, and exits 0
# only when every check passed.
#
# Environment:
#   DW_PYTHON     the Python with torch (default: python3); it must be usable by
#                 the user dwgpu too (a venv under /root is not)
#   DW_GPU_MIB    MiB of GPU memory the root process allocates (default 1024;
#                 the dwgpu process takes half). CUDA adds its context on top.
#   DW_RUNS       timed runs per path (default 10)
#   DW_NVML_LIBRARY  the NVML library of the first path (default libnvidia-ml.so.1)

set -euo pipefail
cd "$(dirname "$0")/../.."

BIN="${1:-target/release/detect-workloads}"
PYTHON="${DW_PYTHON:-python3}"
GPU_MIB="${DW_GPU_MIB:-1024}"
RUNS="${DW_RUNS:-10}"
NVML_LIBRARY="${DW_NVML_LIBRARY:-libnvidia-ml.so.1}"
TEST_USER=dwgpu

failures=0
pass() { echo "PASS: $*"; }
fail() {
	echo "FAIL: $*"
	failures=$((failures + 1))
}
die() {
	echo "FAIL: $*"
	exit 1
}

# --- preconditions ----------------------------------------------------------------
[ "$(id -u)" -eq 0 ] || die "run as root (it starts a process as another user)"
[ -x "$BIN" ] || die "no executable binary at $BIN (cargo build --release first)"
BIN="$(realpath "$BIN")"
command -v nvidia-smi >/dev/null || die "nvidia-smi not found"
command -v setpriv >/dev/null || die "setpriv (util-linux) not found"
command -v python3 >/dev/null || die "python3 not found (used to read the inventory)"
"$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' ||
	die "$PYTHON cannot import torch or sees no CUDA device (set DW_PYTHON)"

TMP="$(mktemp -d /tmp/dw-gpu-check.XXXXXX)"
chmod 755 "$TMP"
PIDS=()
CREATED_USER=0

cleanup() {
	local rc=$?
	set +eu
	for pid in "${PIDS[@]}"; do
		kill "$pid" 2>/dev/null
	done
	for pid in "${PIDS[@]}"; do
		for _ in $(seq 50); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -9 "$pid" 2>/dev/null
		wait "$pid" 2>/dev/null
	done
	if [ "$CREATED_USER" = 1 ]; then
		userdel "$TEST_USER" 2>/dev/null
	fi
	rm -rf "$TMP"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if ! id -u "$TEST_USER" >/dev/null 2>&1; then
	useradd --system --no-create-home --shell /usr/sbin/nologin "$TEST_USER" ||
		die "cannot create user $TEST_USER"
	CREATED_USER=1
fi
TEST_UID="$(id -u "$TEST_USER")"
TEST_GID="$(id -g "$TEST_USER")"
mkdir -p "$TMP/home"
chown "$TEST_UID:$TEST_GID" "$TMP/home"

# --- two CUDA processes -------------------------------------------------------------
# float32: 4 bytes per element.
root_elems=$((GPU_MIB * 1024 * 1024 / 4))
user_elems=$((root_elems / 2))
hold() { echo "import torch,time; x=torch.empty($1, device='cuda'); torch.cuda.synchronize(); time.sleep(600)"; }

# Each runs in $TMP/home (readable by both users); the subshell execs, and
# setpriv execs Python in turn, so $! is the Python process itself.
(cd "$TMP/home" && exec "$PYTHON" -c "$(hold "$root_elems")") >"$TMP/root-proc.log" 2>&1 &
ROOT_PID=$!
PIDS+=("$ROOT_PID")
(cd "$TMP/home" && exec env HOME="$TMP/home" \
	setpriv --reuid="$TEST_UID" --regid="$TEST_GID" --init-groups -- \
	"$PYTHON" -c "$(hold "$user_elems")") >"$TMP/user-proc.log" 2>&1 &
USER_PID=$!
PIDS+=("$USER_PID")
echo "started CUDA processes: root pid $ROOT_PID, $TEST_USER pid $USER_PID"

listed() { nvidia-smi --query-compute-apps=pid --format=csv,noheader | tr -d ' ' | grep -qx "$1"; }
for _ in $(seq 240); do
	kill -0 "$ROOT_PID" 2>/dev/null || { cat "$TMP/root-proc.log"; die "the root CUDA process exited"; }
	kill -0 "$USER_PID" 2>/dev/null || { cat "$TMP/user-proc.log"; die "the $TEST_USER CUDA process exited (can $TEST_USER run $PYTHON?)"; }
	if listed "$ROOT_PID" && listed "$USER_PID"; then
		break
	fi
	sleep 0.5
done
if ! { listed "$ROOT_PID" && listed "$USER_PID"; }; then
	die "nvidia-smi does not list both processes after 120 s"
fi
# Let the allocations settle before comparing figures.
sleep 2
pass "nvidia-smi lists both CUDA processes"

# --- configurations -----------------------------------------------------------------
# $1: directory, $2: NVML library
write_config() {
	mkdir -p "$1"
	cat >"$1/config.toml" <<EOF
[agent]
scan_timeout = "25s"

[[collectors.nvml]]
library = "$2"

[[collectors.nvidia-smi]]
command = "nvidia-smi"
timeout = "5s"
fallback_for = "nvml"

[[collectors.procfs]]
root = "/proc"

[[stages.classify]]
[[stages.resolve-user]]
[[stages.gpu-devices]]
[[stages.exclude-system]]

[[stages.transient-filter]]
min_scans = 1

[[sinks.inventory-file]]
path = "$1/inventory.json"
EOF
}
write_config "$TMP/nvml" "$NVML_LIBRARY"
write_config "$TMP/smi" "/nonexistent/libnvidia-ml.so.1"

for path in nvml smi; do
	if "$BIN" validate --config "$TMP/$path/config.toml" >"$TMP/$path/validate.log" 2>&1; then
		pass "config ($path) validates"
	else
		cat "$TMP/$path/validate.log"
		die "config ($path) does not validate"
	fi
done

# $1: directory; runs one scan, keeps its log.
scan() {
	local rc=0
	"$BIN" --config "$1/config.toml" >>"$1/scan.log" 2>&1 || rc=$?
	return "$rc"
}

nvidia-smi --query-compute-apps=pid,used_memory,gpu_uuid --format=csv,noheader,nounits >"$TMP/apps.csv"

# $1: inventory, $2: which path (nvml | smi). Prints PASS/FAIL lines; the
# exit status is the number of failures.
check_inventory() {
	python3 - "$1" "$2" "$TMP/apps.csv" "$ROOT_PID" "$USER_PID" "$TEST_USER" <<'PY'
import json, sys

inventory_path, path, apps_path, root_pid, user_pid, test_user = sys.argv[1:]
failures = 0


def check(ok, what):
    global failures
    print(("PASS: " if ok else "FAIL: ") + f"[{path}] {what}")
    failures += 0 if ok else 1


apps = {}
with open(apps_path) as f:
    for line in f:
        fields = [x.strip() for x in line.split(",")]
        if len(fields) == 3 and fields[0].isdigit():
            apps[fields[0]] = (int(fields[1]) if fields[1].isdigit() else None, fields[2])

with open(inventory_path) as f:
    inv = json.load(f)
procs = inv.get("host_processes", {})
collectors = inv.get("scan", {}).get("collectors", {})
nvml = collectors.get("nvml", {})
smi = collectors.get("nvidia-smi", {})

if path == "nvml":
    check(nvml.get("ok") is True, f"scan.collectors.nvml ok ({nvml})")
    check(smi.get("ok") is True and smi.get("skipped"), f"nvidia-smi skipped as a fallback ({smi})")
else:
    check(nvml.get("ok") is False and nvml.get("error"), f"scan.collectors.nvml failed with an error ({nvml})")
    check(smi.get("ok") is True and not smi.get("skipped"), f"scan.collectors.nvidia-smi ran and succeeded ({smi})")

for pid, user in ((root_pid, "root"), (user_pid, test_user)):
    entry = procs.get(pid)
    check(entry is not None, f"pid {pid} in host_processes")
    if entry is None:
        continue
    check(entry.get("pid") == int(pid), f"pid {pid}: pid field {entry.get('pid')}")
    check(entry.get("user") == user, f"pid {pid}: user {entry.get('user')!r} == {user!r}")
    expected_mib, expected_uuid = apps.get(pid, (None, None))
    check(expected_uuid is not None, f"pid {pid} in nvidia-smi --query-compute-apps")
    check(entry.get("gpu_uuid") == expected_uuid, f"pid {pid}: gpu_uuid {entry.get('gpu_uuid')} == {expected_uuid}")
    mib = entry.get("gpu_memory_mb")
    close = isinstance(mib, int) and expected_mib and abs(mib - expected_mib) <= 0.05 * expected_mib
    check(bool(close), f"pid {pid}: gpu_memory_mb {mib} within 5 % of nvidia-smi's {expected_mib}")
    check(entry.get("cmdline", "").find("torch") >= 0, f"pid {pid}: cmdline names the program ({entry.get('cmdline', '')[:60]!r})")

with open(inventory_path + ".pids", "w") as f:
    f.write("\n".join(sorted(procs)) + "\n")
sys.exit(min(failures, 100))
PY
}

# --- 1. the NVML path --------------------------------------------------------------
if scan "$TMP/nvml"; then
	pass "scan through NVML exits 0"
	n=0
	check_inventory "$TMP/nvml/inventory.json" nvml || n=$?
	failures=$((failures + n))
else
	fail "scan through NVML exits non-zero"
	tail -n 30 "$TMP/nvml/scan.log"
fi

# --- 2. the nvidia-smi fallback ----------------------------------------------------
if scan "$TMP/smi"; then
	pass "scan with NVML unavailable exits 0"
	n=0
	check_inventory "$TMP/smi/inventory.json" smi || n=$?
	failures=$((failures + n))
else
	fail "scan with NVML unavailable exits non-zero"
	tail -n 30 "$TMP/smi/scan.log"
fi
if [ -f "$TMP/nvml/inventory.json.pids" ] && [ -f "$TMP/smi/inventory.json.pids" ]; then
	if cmp -s "$TMP/nvml/inventory.json.pids" "$TMP/smi/inventory.json.pids"; then
		pass "both paths report the same host processes: $(tr '\n' ' ' <"$TMP/nvml/inventory.json.pids")"
	else
		fail "the paths report different host processes: nvml: $(tr '\n' ' ' <"$TMP/nvml/inventory.json.pids") nvidia-smi: $(tr '\n' ' ' <"$TMP/smi/inventory.json.pids")"
	fi
fi

# --- 3. timing ---------------------------------------------------------------------
# $1: directory, $2: collector whose duration_ms is collected
durations() {
	local i
	: >"$1/durations"
	for i in $(seq "$RUNS"); do
		scan "$1" || { echo "scan $i failed" >&2; return 1; }
		python3 -c '
import json, sys
scan = json.load(open(sys.argv[1]))["scan"]
c = scan["collectors"][sys.argv[2]]
stats = c.get("stats", {})
print(c["duration_ms"], scan["duration_ms"], stats.get("init_us", 0), stats.get("query_us", 0))
' "$1/inventory.json" "$2" >>"$1/durations"
	done
}
median() {
	python3 -c '
import statistics, sys
rows = [line.split() for line in open(sys.argv[1]) if line.strip()]
print(statistics.median(int(r[int(sys.argv[2])]) for r in rows))
' "$1" "$2"
}
if durations "$TMP/nvml" nvml && durations "$TMP/smi" nvidia-smi; then
	nvml_ms="$(median "$TMP/nvml/durations" 0)"
	smi_ms="$(median "$TMP/smi/durations" 0)"
	echo "timing over $RUNS scans each (median duration_ms):"
	echo "  nvml collector:       $nvml_ms ms (whole scan $(median "$TMP/nvml/durations" 1) ms)"
	echo "  nvidia-smi collector: $smi_ms ms (whole scan $(median "$TMP/smi/durations" 1) ms)"
	nvml_init_us="$(median "$TMP/nvml/durations" 2)"
	nvml_query_us="$(median "$TMP/nvml/durations" 3)"
	echo "  nvml library load + init: $nvml_init_us us; process queries (all GPUs): $nvml_query_us us"
	python3 -c '
import sys
query_us, smi_ms = float(sys.argv[1]), float(sys.argv[2])
if query_us > 0:
    print(f"  ratio nvidia-smi run / NVML process query: {smi_ms * 1000 / query_us:.0f}x")
' "$nvml_query_us" "$smi_ms"
	python3 -c '
import sys
nvml, smi = float(sys.argv[1]), float(sys.argv[2])
if nvml > 0:
    print(f"  ratio nvidia-smi / nvml: {smi / nvml:.1f}")
else:
    print(f"  ratio nvidia-smi / nvml: nvml below 1 ms, nvidia-smi {smi} ms")
' "$nvml_ms" "$smi_ms"
	pass "timed $RUNS scans through each path"
else
	fail "a timed scan failed"
fi

# --- verdict -----------------------------------------------------------------------
if [ "$failures" -eq 0 ]; then
	echo "PASS: all GPU checks passed"
else
	echo "FAIL: $failures check(s) failed"
	echo "--- last scan logs ---"
	tail -n 20 "$TMP/nvml/scan.log" "$TMP/smi/scan.log" 2>/dev/null || true
	exit 1
fi
