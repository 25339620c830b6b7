#!/usr/bin/env python3
"""Scrape latency of watch mode's /metrics at N containers (issue 22). Not run in CI.

Creates N containers on a running engine (through the Engine API), starts
`detect-workloads watch` with `[[sinks.prometheus]] listen` on loopback, waits
until its inventory lists them, then times SCRAPES requests of GET /metrics,
each on a new connection as Prometheus's first scrape would be (plain HTTP:
what is timed is the rendering and the serving; TLS adds its handshake), and
prints the median and the worst. Removes the containers it made.

Usage (root, an engine up, e.g. DW_TEST_KEEP=1 DW_TEST_ENGINE_ONLY=1 tests/run.sh):
  python3 tests/bench/scrape.py unix:///tmp/DIR/docker.sock [N] [SCRAPES]
"""
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import base64

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scale  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def scrape(port, tls_ctx=None, auth=None):
    start = time.perf_counter()
    raw = socket.create_connection(("127.0.0.1", port))
    s = tls_ctx.wrap_socket(raw, server_hostname="127.0.0.1") if tls_ctx else raw
    headers = "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    if auth:
        headers += "Authorization: Basic " + base64.b64encode(auth.encode()).decode() + "\r\n"
    s.sendall((headers + "\r\n").encode())
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    ms = (time.perf_counter() - start) * 1000
    if not data.startswith(b"HTTP/1.1 200"):
        sys.exit(f"scrape failed: {data[:200]!r}")
    return ms, len(data)


def main():
    endpoint = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    scrapes = int(sys.argv[3]) if len(sys.argv) > 3 else 100
    sock = endpoint.removeprefix("unix://")
    image = os.environ.get("DW_TEST_IMAGE", "dw-test/busybox:latest")
    binary = os.environ.get("DW_BENCH_BIN", os.path.join(REPO, "target/release/detect-workloads"))
    work = tempfile.mkdtemp(prefix="dw-bench-scrape-")
    ids = []
    lock = threading.Lock()

    def make(start):
        for i in range(start, n, 8):
            status, data = scale.api(sock, "POST", f"/containers/create?name=dw-bench-scrape-{os.getpid()}-{i}",
                               {"Image": image, "Cmd": ["true"], "Labels": {"dw-test": "1", "ds01.user": f"user{i % 40}"},
                                "HostConfig": {"NetworkMode": "none"}})
            if status == 201:
                with lock:
                    ids.append(json.loads(data)["Id"])
    threads = [threading.Thread(target=make, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results = {}
    try:
        modes = [("plain", None)]
        for mode, cert_path in modes:
            port = socket.socket()
            port.bind(("127.0.0.1", 0))
            p = port.getsockname()[1]
            port.close()
            d = os.path.join(work, mode)
            os.makedirs(d)
            extra = f'listen = "127.0.0.1:{p}"\n'
            auth = None
            ctx = None
            conf = os.path.join(d, "config.toml")
            with open(conf, "w") as f:
                f.write(f"""[agent]
scan_timeout = "60s"
interval = "1h"
gpu_interval = "1h"

[[collectors.docker]]
endpoint = "{endpoint}"

[[collectors.procfs]]

[[sinks.inventory-file]]
path = "{d}/inventory.json"

[[sinks.prometheus]]
{extra}""")
            watch = subprocess.Popen([binary, "--config", conf, "watch"], stdout=subprocess.DEVNULL,
                                     stderr=open(os.path.join(d, "watch.log"), "w"))
            try:
                deadline = time.time() + 120
                while True:
                    try:
                        inv = json.load(open(os.path.join(d, "inventory.json")))
                        if len(inv.get("containers", {})) >= n:
                            break
                    except (OSError, ValueError):
                        pass
                    if time.time() > deadline:
                        sys.exit("the inventory did not list the containers")
                    time.sleep(0.2)
                scrape(p, ctx, auth)
                times = []
                size = 0
                for _ in range(scrapes):
                    ms, size = scrape(p, ctx, auth)
                    times.append(ms)
                results[mode] = (statistics.median(times), max(times), size, len(inv["containers"]))
            finally:
                watch.terminate()
                watch.wait()
    finally:
        for cid in ids:
            scale.api(sock, "DELETE", f"/containers/{cid}?force=1")
    print("| /metrics | containers | scrapes | median ms | worst ms | body bytes |")
    print("|---|---|---|---|---|---|")
    for mode, (med, worst, size, count) in results.items():
        print(f"| {mode} | {count} | {scrapes} | {med:.2f} | {worst:.2f} | {size} |")


if __name__ == "__main__":
    main()
