#!/bin/sh
# Runs each cargo-fuzz target for a bounded time (default 60 s each).
# Usage: fuzz/run.sh [seconds]
# cargo-fuzz needs a nightly compiler for its sanitizer flags; RUSTC_BOOTSTRAP
# lets the stable toolchain accept them. Findings land in
# fuzz/artifacts/<target>/; reproduce one with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run <target> fuzz/artifacts/<target>/<file>
set -eu
seconds="${1:-60}"
cd "$(dirname "$0")/.."
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
for target in $(cargo fuzz list); do
    echo "== $target for ${seconds}s"
    # The corpus grows in fuzz/corpus/ (ignored by git); fuzz/seeds/ starts it.
    mkdir -p "fuzz/corpus/$target"
    cargo fuzz run "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- -max_total_time="$seconds"
done
