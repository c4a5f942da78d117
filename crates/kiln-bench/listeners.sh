#!/usr/bin/env bash
# One listener shared by the workers vs one SO_REUSEPORT listener per worker
# (server.reuse_port), 2 workers, GET / with wrk (64 keep-alive connections,
# 5 s), interleaved A B over 3 rounds, loopback only:
#
#   crates/kiln-bench/listeners.sh
#
# Needs the release binary (cargo build --release) and wrk (apt-get install wrk).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=$PWD/target/release/kiln
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
sed 's/127.0.0.1:8080/127.0.0.1:38080/; s/127.0.0.1:9090/127.0.0.1:39090/' deploy.toml > "$DIR/deploy.toml"
for round in 1 2 3; do
  for mode in false true; do
    KILN__SERVER__REUSE_PORT=$mode KILN__SERVER__WORKERS=2 KILN__LOG__LEVEL=warn \
      "$BIN" "$DIR/deploy.toml" 2>/dev/null &
    pid=$!
    for _ in $(seq 100); do curl -sf -o /dev/null 127.0.0.1:38080/ && break; sleep 0.1; done
    out=$(wrk -t1 -c64 -d5s --latency http://127.0.0.1:38080/ 2>&1)
    echo "round $round reuse_port=$mode" \
      "req/s=$(awk '/Requests\/sec/{print $2}' <<<"$out")" \
      "p99=$(awk '/ 99%/{print $2}' <<<"$out")"
    kill -TERM "$pid"
    wait "$pid"
  done
done
