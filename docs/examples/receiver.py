#!/usr/bin/env python3
"""A callback receiver for the README tour: prints every request cb sends and answers 200.

    python3 docs/examples/receiver.py 9000          # answer 200
    python3 docs/examples/receiver.py 9000 500      # answer 500 (to watch retries)
"""
import http.server
import sys

PORT = int(sys.argv[1]) if len(sys.argv) > 1 else 9000
STATUS = int(sys.argv[2]) if len(sys.argv) > 2 else 200


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as cb expects

    def answer(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        print(f"{self.command} {self.path}")
        for name in ("content-type", "cb-file-version", "webhook-id"):
            if name in self.headers:
                print(f"  {name}: {self.headers[name]}")
        if body:
            print("  " + body.decode("utf-8", "replace")[:300].replace("\n", "\n  "))
        sys.stdout.flush()
        self.send_response(STATUS)
        self.send_header("content-length", "0")
        self.end_headers()

    do_POST = do_PUT = do_GET = answer

    def log_message(self, *args):
        pass


print(f"receiver on http://127.0.0.1:{PORT}/ answering {STATUS}", flush=True)
http.server.ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
