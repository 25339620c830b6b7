#!/usr/bin/env python3
"""Helper of tests/bench/watch.sh: watch mode's latencies and idle cost.

  docker   20 x `docker run -d` on the private engine -> container_discovered
  gpu      10 x a process appended to the scripted nvidia-smi's CSV or to the
           fake NVML's scenario -> host_gpu_process_discovered
  idle     utime+stime of the watch process over a window, as a share of one core

The event log is polled every 10 ms. Prints one JSON object.
"""
import argparse
import json
import os
import statistics
import subprocess
import time

POLL = 0.010


def seen(events, offset, event_type, key, value):
    """Whether the event log gained `event_type` with details[key] == value after offset."""
    try:
        with open(events, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return False
    for line in data.splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if e.get("event_type") == "detection." + event_type and str(e.get("details", {}).get(key)) == value:
            return True
    return False


def wait_event(events, offset, event_type, key, value, t0, bound):
    while time.monotonic() - t0 < bound:
        if seen(events, offset, event_type, key, value):
            return time.monotonic() - t0
        time.sleep(POLL)
    raise SystemExit(f"no {event_type} for {key}={value} within {bound}s")


def size(path):
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0


def summary(name, xs, **extra):
    out = {"measure": name, "trials": len(xs), "median_s": round(statistics.median(xs), 3),
           "worst_s": round(max(xs), 3), "best_s": round(min(xs), 3)}
    out.update(extra)
    return out


def docker_latency(a):
    xs = []
    for i in range(a.trials):
        offset = size(a.events)
        cid = subprocess.run(["docker", "-H", a.host, "run", "-d", "--label", "dw-bench=1",
                              "--name", f"dw-bench-watch-{os.getpid()}-{i}", a.image, "sleep", "600"],
                             check=True, capture_output=True, text=True).stdout.strip()[:12]
        t0 = time.monotonic()
        xs.append(max(0.0, wait_event(a.events, offset, "container_discovered", "container_id", cid, t0, 30)))
        time.sleep(0.5)  # let the start's scan settle before the next trial
    return summary("docker run -d returned -> container_discovered", xs)


def gpu_latency(a):
    xs = []
    procs = []
    try:
        for _ in range(a.trials):
            p = subprocess.Popen(["sleep", "600"])
            procs.append(p)
            offset = size(a.events)
            line = a.line.format(pid=p.pid)
            with open(a.file, "a") as f:
                f.write(line + "\n")
            t0 = time.monotonic()
            xs.append(wait_event(a.events, offset, "host_gpu_process_discovered", "pid", str(p.pid), t0, 60))
            # The process goes away before the next trial.
            with open(a.file) as f:
                kept = [l for l in f if l.strip() != line]
            with open(a.file, "w") as f:
                f.writelines(kept)
            p.kill()
            p.wait()
            time.sleep(1.0)
    finally:
        for p in procs:
            p.kill()
    return summary(f"{a.source}: process listed -> host_gpu_process_discovered", xs)


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)


def idle(a):
    hz = os.sysconf("SC_CLK_TCK")
    t0, c0 = time.monotonic(), cpu_ticks(a.pid)
    time.sleep(a.window)
    t1, c1 = time.monotonic(), cpu_ticks(a.pid)
    share = (c1 - c0) / hz / (t1 - t0)
    with open(f"/proc/{a.pid}/status") as f:
        rss = next(l.split()[1] for l in f if l.startswith("VmRSS:"))
    return {"measure": "idle CPU of the watch process", "window_s": round(t1 - t0, 1),
            "cpu_s": round((c1 - c0) / hz, 2), "share_of_one_core_pct": round(100 * share, 2),
            "vmrss_kib": int(rss), "loadavg": open("/proc/loadavg").read().split()[:3]}


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("docker")
    d.add_argument("--host", required=True)
    d.add_argument("--image", required=True)
    d.add_argument("--events", required=True)
    d.add_argument("--trials", type=int, default=20)
    g = sub.add_parser("gpu")
    g.add_argument("--source", required=True)
    g.add_argument("--file", required=True, help="the CSV or scenario gaining the line")
    g.add_argument("--line", required=True, help="the line, {pid} replaced")
    g.add_argument("--events", required=True)
    g.add_argument("--trials", type=int, default=10)
    i = sub.add_parser("idle")
    i.add_argument("--pid", type=int, required=True)
    i.add_argument("--window", type=float, default=60)
    a = ap.parse_args()
    out = {"docker": docker_latency, "gpu": gpu_latency, "idle": idle}[a.cmd](a)
    out["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
