#!/usr/bin/env python3
"""Latency of `GET /v1/attempts` on a large log (issue 21), and of the requests the console's
project view makes, each the median and the slowest of 20.

The log comes from `cli/examples/attempt_log.rs`: CHANGES changes over FILES files as the
daemon writes them (about one attempt a change), then one 503 of project `rare` (callback
`odd`, file 556114) and one timeout of `acme`'s busy `site`, which filters single out.

    cargo build --release -p cb-cli --bin cbd --example attempt_log
    target/release/examples/attempt_log /tmp/attlog 5000000 1000000
    python3 scripts/attempt_cost.py target/release/cbd /tmp/attlog
"""
import json
import statistics
import sys
import time
import urllib.parse

from waiting_rss import call, daemon


def timed(base, path, times=20):
    took = []
    body = None
    for _ in range(times):
        start = time.perf_counter()
        body = call(base, "GET", path)
        took.append((time.perf_counter() - start) * 1000)
    return statistics.median(took), max(took), body


def main():
    cbd, data_dir = sys.argv[1], sys.argv[2]
    started = time.time()
    with daemon(cbd, data_dir) as (_, base):
        status = json.loads(call(base, "GET", "/v1/status"))
        print(f"cbd up in {time.time() - started:.1f} s; last seq {status.get('last_seq')}", flush=True)
        newest = json.loads(call(base, "GET", "/v1/attempts?limit=1"))["items"][0]
        mid = json.loads(call(base, "GET", f"/v1/attempts?limit=1&after={newest['seq'] // 2}"))["items"][0]
        t = urllib.parse.quote(mid["time"], safe="")
        queries = [
            ("outcome=5xx", "outcome=5xx (1 match)"),
            ("project=rare", "project=rare (1 match)"),
            ("project=acme&callback=site&outcome=timeout", "project+callback+outcome (1 match)"),
            ("project=rare&callback=odd&file=556114&outcome=5xx", "all five fields (1 match)"),
            (f"project=acme&file={mid['file_id']}", "one file of acme (its attempts)"),
            (f"since={t}&until={t}", "since=until=a time mid-log"),
            ("", "no filter, first page of 100"),
            ("project=acme&limit=1000", "project=acme, first page of 1000"),
            ("outcome=delivered&limit=1000", "outcome=delivered, first page of 1000"),
        ]
        for q, what in queries:
            median, worst, body = timed(base, "/v1/attempts?" + q)
            n = len(json.loads(body)["items"])
            print(f"GET /v1/attempts {what}: median {median:.2f} ms, slowest {worst:.2f} ms, {n} items",
                  flush=True)
        for path, what in [
            ("/", "console page (GET /)"),
            ("/v1/projects", "console projects view: GET /v1/projects"),
            ("/v1/deliveries?state=retrying&limit=50", "console failing list: retrying"),
            ("/v1/deliveries?state=abandoned&limit=50", "console failing list: abandoned"),
        ]:
            median, worst, _ = timed(base, path)
            print(f"{what}: median {median:.2f} ms, slowest {worst:.2f} ms", flush=True)


if __name__ == "__main__":
    main()
