#!/usr/bin/env python3
"""Latency of `GET /v1/deliveries` (and of `GET /v1/projects`) with N files held (issue 21; SPEC §8: a filtered list
with 1 M files held in <= 50 ms), with a filter that matches 1 machine in N on each field
and on their combination, and of a first page that matches them all.

N files of project `big` sit coalescing in a 7-day window on one origin; one file of
project `rare` has a callback `odd` whose target refuses connections (127.0.0.1:9), so
its machine is the only one retrying and the only one at that origin. Prints the median
and the slowest of 20 requests per query.

    cargo build --release -p cb-cli
    python3 scripts/list_cost.py target/release/cbd 1000000
    python3 scripts/list_cost.py target/release/cbd 1000000 10   # 10 changes a file: 10 M records
"""
import json
import statistics
import sys
import time
import urllib.parse

from waiting_rss import call, daemon, ingest, metric


def timed(base, path, times=20):
    took = []
    body = None
    for _ in range(times):
        start = time.perf_counter()
        body = call(base, "GET", path)
        took.append((time.perf_counter() - start) * 1000)
    return statistics.median(took), max(took), json.loads(body)


def run(cbd, n, rounds):
    with daemon(cbd) as (_, base):
        big = {"url": "http://127.0.0.2:9/cb", "window_secs": 604800}
        call(base, "PUT", "/v1/projects/big/callbacks/site", json.dumps(big).encode())
        odd = {"url": "http://127.0.0.1:9/odd", "window_secs": 1, "leading": True,
               "backoff_secs": [86400]}
        call(base, "PUT", "/v1/projects/rare/callbacks/odd", json.dumps(odd).encode())
        for _ in range(rounds):
            ingest(base, "big", n)
        call(base, "POST", "/v1/changes", json.dumps(
            {"project": "rare", "file_id": "556114", "event": "uploaded",
             "file": {"title": "t"}}).encode())
        deadline = time.time() + 600
        while (metric(base, 'cb_machines{state="coalescing"}') < n
               or metric(base, 'cb_machines{state="retrying"}') < 1):
            if time.time() > deadline:
                raise RuntimeError("did not settle")
            time.sleep(1)
        origin = urllib.parse.quote("http://127.0.0.1:9", safe="")
        queries = [
            ("state=retrying", "state"),
            ("project=rare", "project"),
            ("callback=odd", "callback"),
            (f"origin={origin}", "origin"),
            (f"state=retrying&project=rare&callback=odd&origin={origin}", "all four"),
            ("", "no filter, first page of 100"),
            ("state=coalescing&limit=1000", f"state=coalescing ({n} match), first page of 1000"),
            ("/v1/projects", "GET /v1/projects (both projects with their counts)"),
        ]
        for q, what in queries:
            median, worst, page = timed(base, q if q.startswith("/") else "/v1/deliveries?" + q)
            print(f"{n} files held, {n * rounds} changes, {what}: median {median:.2f} ms, slowest {worst:.2f} ms, "
                  f"{len(page['items'])} items", flush=True)


def main():
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    run(sys.argv[1], int(sys.argv[2]), rounds)


if __name__ == "__main__":
    main()
