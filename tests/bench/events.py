#!/usr/bin/env python3
"""What exactly-once delivery costs a scan (issue 20). Not run in CI.

Two binaries (DW_BENCH_BIN, and DW_BENCH_BASELINE: a build without the
outbox) scan the same engine, each with its own state and event log, run by
run alternately under tests/bench/rusage.c (wall time, CPU time):

  event scan   one container created and the previous one removed before
               each pair of runs: every scan writes two transitions (the
               outbox in the inventory, the lines, the delivered mark, the
               log's receipt)
  steady scan  nothing changed since the previous scan

Prints the medians and the ratios new / baseline as markdown table rows.

Usage (root, an engine up, e.g. DW_TEST_KEEP=1 DW_TEST_ENGINE_ONLY=1 tests/run.sh):
  DW_BENCH_BASELINE=/path/to/old/detect-workloads \\
  python3 tests/bench/events.py unix:///tmp/DIR/docker.sock [RUNS]
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scale  # noqa: E402  (UnixConnection, spawn)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def config(dirname, endpoint):
    path = os.path.join(dirname, "config.toml")
    with open(path, "w") as f:
        f.write(
            f"""[agent]
scan_timeout = "60s"
source = "bench"

[[collectors.docker]]
endpoint = "{endpoint}"

[[collectors.procfs]]

[[sinks.inventory-file]]
path = "{dirname}/state/inventory.json"

[[sinks.event-log]]
path = "{dirname}/log/events.jsonl"
"""
        )
    return path


def main():
    endpoint = sys.argv[1]
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 31
    sock = endpoint.removeprefix("unix://")
    new = os.environ.get("DW_BENCH_BIN", os.path.join(REPO, "target/release/detect-workloads"))
    old = os.environ["DW_BENCH_BASELINE"]
    work = tempfile.mkdtemp(prefix="dw-bench-events-")
    scale.RUSAGE = os.path.join(work, "rusage")
    subprocess.run(["cc", "-O2", "-o", scale.RUSAGE, os.path.join(REPO, "tests/bench/rusage.c")], check=True)
    image = os.environ.get("DW_TEST_IMAGE", "dw-test/busybox:latest")
    sides = {}
    for name, binary in (("new", new), ("baseline", old)):
        d = os.path.join(work, name)
        os.makedirs(d)
        sides[name] = (binary, config(d, endpoint), d)
    env = dict(os.environ)
    env.pop("DOCKER_HOST", None)

    def scan(name):
        binary, conf, d = sides[name]
        wall, cpu, _, code = scale.spawn([binary, "--config", conf], os.path.join(d, "stderr"), env)
        if code != 0:
            sys.exit(f"{name} scan failed: {open(os.path.join(d, 'stderr')).read()}")
        return wall, cpu

    for name in sides:
        scan(name)
        scan(name)
    results = {k: {"event": [], "steady": []} for k in sides}
    last = None
    for i in range(runs):
        status, created = scale.api(sock, "POST", f"/containers/create?name=dw-bench-ev-{os.getpid()}-{i}",
                                    {"Image": image, "Cmd": ["true"], "Labels": {"dw-test": "1"}})
        if status != 201:
            sys.exit(f"cannot create a container: {status} {created[:200]!r}")
        if last:
            scale.api(sock, "DELETE", f"/containers/{last}?force=1")
        last = json.loads(created)["Id"]
        order = ["new", "baseline"] if i % 2 == 0 else ["baseline", "new"]
        for name in order:
            results[name]["event"].append(scan(name))
        for name in order:
            results[name]["steady"].append(scan(name))
    if last:
        scale.api(sock, "DELETE", f"/containers/{last}?force=1")
    for name in sides:
        lines = open(os.path.join(sides[name][2], "log/events.jsonl")).read().splitlines()
        print(f"{name}: {len(lines)} event lines", file=sys.stderr)
    print("| scan | new wall ms | baseline wall ms | ratio | new CPU ms | baseline CPU ms | ratio |")
    print("|---|---|---|---|---|---|---|")
    for kind in ("event", "steady"):
        med = {k: (statistics.median(w for w, _ in v[kind]), statistics.median(c for _, c in v[kind]))
               for k, v in results.items()}
        ratio_w = statistics.median(n[0] / b[0] for n, b in zip(results["new"][kind], results["baseline"][kind]))
        ratio_c = statistics.median(n[1] / b[1] for n, b in zip(results["new"][kind], results["baseline"][kind]))
        print(f"| {kind} ({runs} pairs) | {med['new'][0]:.1f} | {med['baseline'][0]:.1f} | {ratio_w:.2f} "
              f"| {med['new'][1]:.1f} | {med['baseline'][1]:.1f} | {ratio_c:.2f} |")


if __name__ == "__main__":
    main()
