#!/usr/bin/env python3
"""Measurement half of tests/bench/scale.sh (see there).

Runs the detect-workloads binary and a bare list call as child processes under
tests/bench/rusage.c, which reads for each run its wall time (monotonic clock
around fork+exec+wait4), its CPU time (user+system) and peak RSS (ru_maxrss)
from wait4(). wait4 reports the child together with the children it reaped
itself, i.e. the scan including the scripted nvidia-smi it runs; that script is
measured on its own too ("smi_cpu_ms") so the scan's own share can be told apart.

Subcommands:
  create   creates containers through the Engine API (threads, one keep-alive
           connection each) and starts some of them
  measure  one N: cold runs, then steady runs interleaved with bare list calls;
           prints one JSON object
  table    reads the JSON objects (one per line) and prints the markdown table
"""
import argparse
import http.client
import json
import os
import socket
import statistics
import sys
import time


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=60):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.unix_path)
        self.sock = s


def api(sock, method, path, body=None):
    """One Engine API request on the socket at `sock`: (status, body bytes)."""
    conn = UnixConnection(sock)
    headers = {"Content-Type": "application/json"} if body is not None else {}
    conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, data


RUSAGE = None  # path of the compiled tests/bench/rusage.c (set by measure)


def spawn(argv, stderr_path, env):
    """Runs argv under the rusage helper; returns (wall_ms, cpu_ms, maxrss_mb, exit_status)."""
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0),
        (os.POSIX_SPAWN_OPEN, 2, stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644),
    ]
    out = stderr_path + ".rusage"
    pid = os.posix_spawn(RUSAGE, [RUSAGE, out] + argv, env, file_actions=actions)
    _, status, _ = os.wait4(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"rusage helper failed: {open(stderr_path).read()}")
    wall_us, cpu_us, maxrss_kb, code = (int(x) for x in open(out).read().split())
    return wall_us / 1000.0, cpu_us / 1000.0, maxrss_kb / 1024.0, code


def engine_calls(log_path):
    """Number of API requests dockerd logged so far ('Calling METHOD /path')."""
    n = 0
    with open(log_path, "rb") as f:
        for line in f:
            if b"Calling " in line:
                n += 1
    return n


def docker_stats(inventory_path):
    with open(inventory_path) as f:
        inv = json.load(f)
    docker = inv["scan"]["collectors"]["docker"]
    assert docker.get("ok"), f"docker collector failed: {docker}"
    stats = docker.get("stats", {})
    return (
        stats.get("api_calls"),
        stats.get("inspects"),
        len(inv["containers"]),
        len(inv["host_processes"]),
        len(inv.get("_pending_processes", {})),
    )


def med(values):
    return statistics.median(values) if values else float("nan")


def measure(a):
    global RUSAGE
    RUSAGE = a.rusage
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env.pop("DETECT_WORKLOADS_CONFIG", None)
    scan = [a.bin, "--config", a.config]
    bare = [
        "/usr/bin/curl", "-s", "-f", "-o", "/dev/null", "--unix-socket", a.sock,
        "http://x/v1.41/containers/json?all=1",
    ]
    err = os.path.join(a.work, "scan.stderr")

    def scan_once(command=None):
        w, c, r, rc = spawn(command or scan, err, env)
        if rc != 0:
            sys.exit(f"scan failed (exit {rc}): {open(err).read()}")
        return w, c, r

    def reset_state():
        for p in (a.inventory, a.events, a.baseline_inventory, a.baseline_events):
            if p is None:
                continue
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass

    out = {"n": a.n, "loadavg_start": open("/proc/loadavg").read().split()[:3]}

    # Cold: no previous state; every container is inspected.
    cold = []
    for _ in range(a.cold_runs):
        reset_state()
        before = engine_calls(a.log)
        w, c, r = scan_once()
        logged = engine_calls(a.log) - before
        calls, inspects, n_cont, n_host, n_pend = docker_stats(a.inventory)
        cold.append(dict(wall=w, cpu=c, rss=r, calls=calls, inspects=inspects, logged=logged))
    out["containers_seen"] = n_cont
    # The same cold scans with the baseline binary, if any (same engine, same run).
    base_scan = [a.baseline, "--config", a.baseline_config or a.config] if a.baseline else None
    base_inventory = a.baseline_inventory or a.inventory
    base_cold = []
    for _ in range(a.cold_runs if base_scan else 0):
        reset_state()
        w, c, r = scan_once(base_scan)
        base_cold.append(dict(wall=w, cpu=c, rss=r, calls=docker_stats(base_inventory)[0]))

    # Steady: seed the state twice (second scan confirms the GPU processes),
    # then alternate bare list calls and steady scans. The collector asks for
    # the events since one second before the previous scan (whole seconds), so
    # wait until the creations are out of that window first.
    time.sleep(2.5)
    for _ in range(2):
        scan_once()
        if base_scan:
            scan_once(base_scan)
    spawn(bare, err, env)  # warm-up
    steady, bares = [], []
    base_steady, base_bares = [], []
    for _ in range(a.runs):
        w, c, r, rc = spawn(bare, err, env)
        if rc != 0:
            sys.exit(f"bare list call failed (exit {rc})")
        bares.append(dict(wall=w, cpu=c))
        before = engine_calls(a.log)
        w, c, r = scan_once()
        logged = engine_calls(a.log) - before
        calls, inspects, n_cont, n_host, n_pend = docker_stats(a.inventory)
        steady.append(dict(wall=w, cpu=c, rss=r, calls=calls, inspects=inspects, logged=logged))
        if base_scan:
            # The baseline, paired with a bare call of its own just before it.
            w, c, r, rc = spawn(bare, err, env)
            base_bares.append(dict(wall=w, cpu=c))
            w, c, r = scan_once(base_scan)
            calls = docker_stats(base_inventory)[0]
            base_steady.append(dict(wall=w, cpu=c, rss=r, calls=calls))
    out["host_processes"] = n_host
    out["pending_processes"] = n_pend
    out["inventory_kb"] = os.path.getsize(a.inventory) / 1024.0

    # The scripted nvidia-smi alone (its CPU is included in the scan's wait4 figures).
    smi = [spawn([a.smi] + ["--query-compute-apps=pid,used_memory,gpu_uuid",
                            "--format=csv,noheader,nounits"], err, env) for _ in range(a.runs)]

    # In-process list call (new connection each time, body read fully).
    inproc = []
    for _ in range(a.runs):
        t0 = time.perf_counter()
        conn = UnixConnection(a.sock)
        conn.request("GET", "/v1.41/containers/json?all=1")
        body = conn.getresponse().read()
        conn.close()
        inproc.append((time.perf_counter() - t0) * 1000.0)
    out["list_bytes"] = len(body)

    def summary(rows, key):
        return med([r[key] for r in rows])

    out.update(
        bare_wall_ms=summary(bares, "wall"),
        bare_cpu_ms=summary(bares, "cpu"),
        bare_inproc_ms=med(inproc),
        cold_wall_ms=summary(cold, "wall"),
        cold_cpu_ms=summary(cold, "cpu"),
        cold_rss_mb=summary(cold, "rss"),
        cold_calls=sorted({r["calls"] for r in cold}),
        cold_inspects=sorted({r["inspects"] for r in cold}),
        cold_logged=sorted({r["logged"] for r in cold}),
        steady_wall_ms=summary(steady, "wall"),
        steady_cpu_ms=summary(steady, "cpu"),
        steady_rss_mb=summary(steady, "rss"),
        steady_calls=sorted({r["calls"] for r in steady}),
        steady_inspects=sorted({r["inspects"] for r in steady}),
        steady_logged=sorted({r["logged"] for r in steady}),
        smi_cpu_ms=med([s[1] for s in smi]),
        smi_wall_ms=med([s[0] for s in smi]),
        runs=a.runs,
        cold_runs=a.cold_runs,
        steady_walls=[round(r["wall"], 1) for r in steady],
        bare_walls=[round(r["wall"], 1) for r in bares],
        loadavg_end=open("/proc/loadavg").read().split()[:3],
    )
    out["ratio"] = out["steady_wall_ms"] / out["bare_wall_ms"]
    # Pairwise ratio (each steady scan over the bare call just before it).
    out["ratio_pairwise_median"] = med([s["wall"] / b["wall"] for s, b in zip(steady, bares)])
    if base_scan:
        out["baseline"] = dict(
            bin=a.baseline,
            cold_wall_ms=summary(base_cold, "wall"),
            cold_cpu_ms=summary(base_cold, "cpu"),
            steady_wall_ms=summary(base_steady, "wall"),
            steady_cpu_ms=summary(base_steady, "cpu"),
            steady_rss_mb=summary(base_steady, "rss"),
            steady_calls=sorted({r["calls"] for r in base_steady}),
            bare_wall_ms=summary(base_bares, "wall"),
            ratio=summary(base_steady, "wall") / summary(base_bares, "wall"),
            ratio_pairwise_median=med([s["wall"] / b["wall"] for s, b in zip(base_steady, base_bares)]),
        )
    print(json.dumps(out))


def create(a):
    """Creates containers with indices [first, first+count); starts those below --start."""
    import concurrent.futures
    import threading

    local = threading.local()

    def conn():
        if not hasattr(local, "c"):
            local.c = UnixConnection(a.sock)
        return local.c

    def call(method, path, body=None):
        c = conn()
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data else {}
        c.request(method, path, body=data, headers=headers)
        r = c.getresponse()
        text = r.read()
        if r.status >= 300:
            raise RuntimeError(f"{method} {path}: {r.status} {text[:300]!r}")
        return json.loads(text) if text else None

    def make(i):
        # A mix like a lab server's: lab-managed, compose, devcontainer, raw;
        # every 10th asks for the nvidia runtime.
        labels = {"dw-bench": "1"}
        kind = i % 4
        if kind == 0:
            labels.update({"ds01.managed": "true", "ds01.user": f"user{i % 37}",
                           "ds01.gpu.slots": f"0:{i % 4}"})
        elif kind == 1:
            labels.update({"com.docker.compose.project": f"proj{i % 13}",
                           "com.docker.compose.service": "web"})
        elif kind == 2:
            labels.update({"devcontainer.local_folder": f"/home/user{i % 37}/repo"})
        host = {"NetworkMode": "none"}
        if i % 10 == 0:
            host["Runtime"] = "nvidia"
        body = {"Image": a.image, "Cmd": ["sleep", "1000000"], "Labels": labels,
                "HostConfig": host}
        r = call("POST", f"/v1.41/containers/create?name=dw-bench-{i}", body)
        if i < a.start:
            call("POST", f"/v1.41/containers/{r['Id']}/start")
        return r["Id"]

    with concurrent.futures.ThreadPoolExecutor(a.jobs) as pool:
        ids = list(pool.map(make, range(a.first, a.first + a.count)))
    print(len(ids))


def one(v):
    return "/".join(str(x) for x in v) if isinstance(v, list) else str(v)


def table(a):
    rows = [json.loads(l) for l in open(a.results) if l.strip()]
    cols = [
        ("N", lambda r: str(r["n"])),
        ("bare list ms (curl)", lambda r: f"{r['bare_wall_ms']:.1f}"),
        ("list in-proc ms", lambda r: f"{r['bare_inproc_ms']:.1f}"),
        ("cold wall ms", lambda r: f"{r['cold_wall_ms']:.0f}"),
        ("steady wall ms", lambda r: f"{r['steady_wall_ms']:.1f}"),
        ("steady/bare (paired)", lambda r: f"{r['ratio']:.2f} ({r['ratio_pairwise_median']:.2f})"),
        ("steady CPU ms (incl. smi)", lambda r: f"{r['steady_cpu_ms']:.1f} ({r['steady_cpu_ms'] - r['smi_cpu_ms']:.1f})"),
        ("steady peak RSS MB", lambda r: f"{r['steady_rss_mb']:.1f}"),
        ("steady API calls (log)", lambda r: f"{one(r['steady_calls'])} ({one(r['steady_logged'])})"),
        ("cold API calls (log)", lambda r: f"{one(r['cold_calls'])} ({one(r['cold_logged'])})"),
        ("cold CPU ms", lambda r: f"{r['cold_cpu_ms']:.0f}"),
        ("cold RSS MB", lambda r: f"{r['cold_rss_mb']:.1f}"),
        ("inventory KB", lambda r: f"{r['inventory_kb']:.0f}"),
        ("load (start→end)", lambda r: f"{r['loadavg_start'][0]}→{r['loadavg_end'][0]}"),
    ]
    print("| " + " | ".join(c[0] for c in cols) + " |")
    print("|" + "|".join("---" for _ in cols) + "|")
    for r in rows:
        print("| " + " | ".join(c[1](r) for c in cols) + " |")
    for r in rows:
        b = r.get("baseline")
        if b:
            print(f"\nbaseline {b['bin']} at N={r['n']} (same run, interleaved): steady {b['steady_wall_ms']:.1f} ms, "
                  f"steady/bare {b['ratio']:.2f} ({b['ratio_pairwise_median']:.2f}), "
                  f"CPU {b['steady_cpu_ms']:.1f} ms (incl. smi), peak RSS {b['steady_rss_mb']:.1f} MB, "
                  f"API calls {one(b['steady_calls'])}, cold {b['cold_wall_ms']:.0f} ms / {b['cold_cpu_ms']:.0f} ms CPU")
    print()
    print("steady/bare: median steady wall over median bare wall; in parentheses the "
          "median of each steady scan's wall over the bare call just before it.")
    print("steady CPU: wait4() figure of the scan incl. the scripted nvidia-smi it runs; "
          "in parentheses minus the script's own median CPU. API calls: "
          "scan.collectors.docker.stats.api_calls (in parentheses: 'Calling ...' lines "
          "the engine's debug log gained during the scan).")


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("measure")
    for k in ("bin", "rusage", "config", "sock", "log", "inventory", "events", "smi", "work"):
        m.add_argument("--" + k, required=True)
    m.add_argument("--n", type=int, required=True)
    m.add_argument("--runs", type=int, default=21)
    m.add_argument("--cold-runs", type=int, default=5)
    m.add_argument("--baseline", help="a second binary measured the same way, interleaved")
    m.add_argument("--baseline-config", help="its configuration (default: --config)")
    m.add_argument("--baseline-inventory", help="the inventory its configuration writes")
    m.add_argument("--baseline-events", help="the event log its configuration writes")
    c = sub.add_parser("create")
    c.add_argument("--sock", required=True)
    c.add_argument("--image", required=True)
    c.add_argument("--first", type=int, required=True)
    c.add_argument("--count", type=int, required=True)
    c.add_argument("--start", type=int, default=0, help="start containers with index below this")
    c.add_argument("--jobs", type=int, default=4)
    t = sub.add_parser("table")
    t.add_argument("results")
    a = p.parse_args()
    {"measure": measure, "create": create, "table": table}[a.cmd](a)


if __name__ == "__main__":
    main()
