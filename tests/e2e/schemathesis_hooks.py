"""schemathesis hooks for tests/e2e/openapi.rs: how to put the NDJSON body of
`POST /v1/changes/batch` on the wire.

The document describes that body as an array of changes, one line each (OpenAPI 3.1 has no
schema for a stream of lines); schemathesis knows no serializer for application/x-ndjson,
so this one writes each item of a generated array as one JSON line. Anything else it
generates for the body (negative cases: an object, a number, a string) is sent as one line,
or as the text itself, so that cbd gets to refuse it.
"""

import json

import schemathesis


@schemathesis.serializer("application/x-ndjson")
def ndjson(ctx, value):
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    if isinstance(value, list):
        return "".join(json.dumps(item) + "\n" for item in value).encode("utf-8")
    return (json.dumps(value) + "\n").encode("utf-8")
