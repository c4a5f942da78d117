#!/usr/bin/env python3
"""How long a configuration change takes to be served, measured end to end.

    crates/kiln-bench/save_to_serve.py [KILN_BINARY]   # default target/release/kiln

Copies the repo's deploy.toml into a temporary folder (ports 38080/39090),
starts kiln on it, then, 20 times each:
  1. edits app.greeting and calls POST /admin/reload: the answer's took_ms and
     the request-to-answer time;
  2. with [reload] watch = true, saves the file the way editors do (write a
     temporary file, rename it over) and polls GET / until the new greeting is
     served: the save-to-served time, for debounce 250ms (the default) and 20ms.
Prints a markdown table of medians with min and max (run.sh saves it as
target/bench/save-to-serve.md). Loopback only; bounded (20 s per wait).
"""
import json, os, shutil, statistics, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BINARY = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target/release/kiln")
MAIN, ADMIN = "127.0.0.1:38080", "127.0.0.1:39090"


def get(url, method="GET"):
    return urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=5).read().decode()


def row(what, xs):
    return f"| {what} | {statistics.median(xs):.1f} ms | {min(xs):.1f}–{max(xs):.1f} ms |"


def wait_for(want):
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if get(f"http://{MAIN}/") == want:
                return
        except OSError:
            pass
    sys.exit(f"timed out waiting for {want!r}")


def run(debounce):
    folder = tempfile.mkdtemp(prefix="kiln-save-")
    path = os.path.join(folder, "deploy.toml")
    text = open(os.path.join(ROOT, "deploy.toml")).read()
    text = text.replace("127.0.0.1:8080", MAIN).replace("127.0.0.1:9090", ADMIN)
    text = text.replace('debounce = "250ms"', f'debounce = "{debounce}"')
    open(path, "w").write(text)
    server = subprocess.Popen([BINARY, path], stderr=subprocess.DEVNULL)
    try:
        wait_for("Hello from kiln")
        took, answered, served = [], [], []
        for i in range(20):
            open(path, "w").write(text.replace("Hello from kiln", f"reload {i}"))
            start = time.perf_counter()
            took.append(json.loads(get(f"http://{ADMIN}/admin/reload", "POST"))["took_ms"])
            answered.append((time.perf_counter() - start) * 1000)
        watched = text.replace("watch = false", "watch = true")
        open(path, "w").write(watched)
        get(f"http://{ADMIN}/admin/reload", "POST")
        for i in range(20):
            want = f"watched {i}"
            open(path + ".tmp", "w").write(watched.replace("Hello from kiln", want))
            start = time.perf_counter()
            os.replace(path + ".tmp", path)
            wait_for(want)
            served.append((time.perf_counter() - start) * 1000)
            time.sleep(0.3)
        return took, answered, served
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(folder)


print("### From a file save to the new value served\n")
print("`crates/kiln-bench/save_to_serve.py`: the release binary on the repo's `deploy.toml`"
      " (2 workers, SQLite), no load; 20 of each.\n")
print("| what | median | min–max |\n|---|---|---|")
for debounce in ["250ms", "20ms"]:
    took, answered, served = run(debounce)
    if debounce == "250ms":
        print(row("`POST /admin/reload`: `took_ms` in the answer", took))
        print(row("`POST /admin/reload`: request to answer, client side", answered))
    print(row(f"file saved (rename over) to new value served, `[reload] watch = true`, `debounce = \"{debounce}\"`", served))
