#!/usr/bin/env python3
"""Latency of a `/metrics` scrape and of `GET /v1/status` with N files held (issue 20: the
census behind them is kept as machines move, not counted per request).

The callback has a 7-day window, so the N machines stay coalescing: the files are held and
nothing expires while we measure. Prints the median and the slowest of 20 requests each.

    cargo build --release -p cb-cli
    python3 scripts/scrape_cost.py target/release/cbd 1000000
"""
import json
import statistics
import sys
import time

from waiting_rss import call, daemon, ingest, metric


def timed(base, path, times=20):
    took = []
    for _ in range(times):
        start = time.perf_counter()
        call(base, "GET", path)
        took.append((time.perf_counter() - start) * 1000)
    return statistics.median(took), max(took)


def run(cbd, n):
    with daemon(cbd) as (_, base):
        config = {"url": "http://127.0.0.1:9/cb", "window_secs": 604800}
        call(base, "PUT", "/v1/projects/scrape/callbacks/site", json.dumps(config).encode())
        ingest(base, "scrape", n)
        deadline = time.time() + 600
        while metric(base, 'cb_machines{state="coalescing"}') < n:
            if time.time() > deadline:
                raise RuntimeError("did not settle")
            time.sleep(1)
        for path in ["/metrics", "/v1/status"]:
            median, worst = timed(base, path)
            print(f"{n} files held: GET {path} median {median:.2f} ms, slowest {worst:.2f} ms",
                  flush=True)


def main():
    for n in [int(a) for a in sys.argv[2:]]:
        run(sys.argv[1], n)


if __name__ == "__main__":
    main()
