"""The gunicorn anchor of kiln's reload benchmark (`kiln-bench anchors`).

A WSGI app that answers every request with the greeting in the file named by
KILN_BENCH_GREETING_FILE, read once when the module is imported: each worker
process holds the configuration it was started with, as a typical Python web
app does. A SIGHUP to the master starts new workers, which import the module
again and so read the file again, unless the app was preloaded in the master
(`--preload`).
"""

import os

with open(os.environ["KILN_BENCH_GREETING_FILE"], "rb") as f:
    GREETING = f.read()

HEADERS = [
    ("Content-Type", "text/plain; charset=utf-8"),
    ("Content-Length", str(len(GREETING))),
]


def app(environ, start_response):
    start_response("200 OK", HEADERS)
    return [GREETING]
