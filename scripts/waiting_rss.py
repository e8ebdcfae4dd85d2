#!/usr/bin/env python3
"""RSS of cbd with N attempts waiting on a dead receiver, beside a control run holding the
same N files without attempts (issue 20; SPEC §8: <= 256 bytes per waiting attempt).

The dead receiver accepts connections and never answers, so every attempt to it either
holds one of the origin's starting slots (2) until its 600 s timeout or waits for one.
The control run's callback has a 7-day window, so its N machines are coalescing: the same
files and machines in the core, no attempt. The margin is (RSS dead - RSS control) / N.

    cargo build --release -p cb-cli
    python3 scripts/waiting_rss.py target/release/cbd 100000 1000000
"""
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

TOKEN = "waiting-rss-token-0123456789"


def dead_receiver():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(1024)
    held = []

    def accept():
        while True:
            c, _ = s.accept()
            held.append(c)  # never read, never answered

    threading.Thread(target=accept, daemon=True).start()
    return s.getsockname()[1]


def call(base, method, path, body=None, ctype="application/json"):
    req = urllib.request.Request(base + path, data=body, method=method)
    req.add_header("Authorization", "Bearer " + TOKEN)
    if body is not None:
        req.add_header("Content-Type", ctype)
    with urllib.request.urlopen(req, timeout=120) as r:
        return r.read().decode()


def metric(base, name):
    text = call(base, "GET", "/metrics")
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


@contextlib.contextmanager
def daemon(cbd, data_dir=None):
    """cbd on `data_dir` (a temp one when None), port 0 and TOKEN, private targets allowed:
    yields its process and base URL, and stops it after."""
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, CBD_TOKEN=TOKEN, CBD_LOG="warn")
        proc = subprocess.Popen(
            [cbd, "--data-dir", data_dir or tmp + "/data", "--listen", "127.0.0.1:0",
             "--allow-private-targets"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
        addr = None
        for line in proc.stdout:
            if line.startswith("cbd: listening on http://"):
                addr = line.strip().split("http://", 1)[1]
                break
        threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
        try:
            yield proc, "http://" + addr
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def ingest(base, project, n):
    """N changes to files 0..N of `project`, in NDJSON batches of 1000."""
    for start in range(0, n, 1000):
        lines = "".join(
            json.dumps({"project": project, "file_id": str(i), "event": "uploaded",
                        "file": {"title": "t"}}) + "\n"
            for i in range(start, min(n, start + 1000)))
        call(base, "POST", "/v1/changes/batch", lines.encode(), "application/x-ndjson")


def run(cbd, n, dead):
    port = dead_receiver()
    with daemon(cbd) as (proc, base):
        config = {"url": f"http://127.0.0.1:{port}/cb", "timeout_secs": 600,
                  "retry_for_secs": 86400}
        config.update({"window_secs": 1, "leading": True} if dead else {"window_secs": 604800})
        call(base, "PUT", "/v1/projects/rss/callbacks/site", json.dumps(config).encode())
        ingest(base, "rss", n)
        deadline = time.time() + 600
        while time.time() < deadline:
            if dead:
                settled = metric(base, "cb_attempts_waiting") >= n - 2
            else:
                settled = metric(base, 'cb_machines{state="coalescing"}') >= n
            if settled:
                break
            time.sleep(1)
        else:
            raise RuntimeError("did not settle")
        time.sleep(3)
        rss = rss_kib(proc.pid)
        waiting = metric(base, "cb_attempts_waiting")
        return rss, waiting


def main():
    cbd = sys.argv[1]
    for n in [int(a) for a in sys.argv[2:]]:
        control, _ = run(cbd, n, dead=False)
        dead, waiting = run(cbd, n, dead=True)
        margin = (dead - control) * 1024 / n
        print(f"{n} files: control {control / 1024:.1f} MiB, dead receiver {dead / 1024:.1f} MiB "
              f"({int(waiting)} attempts waiting): {margin:.0f} bytes per waiting attempt",
              flush=True)


if __name__ == "__main__":
    main()
