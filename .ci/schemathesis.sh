#!/usr/bin/env bash
# Fuzzes the admin API with schemathesis against its own OpenAPI document
# (GET /admin/openapi.json), every check on, twice: a server with
# admin.token (requests carry it) and one without (loopback, no token).
# Each run serves a throwaway SQLite config in a temp dir, so PATCHes and
# rollbacks change nothing outside it. Any finding fails the script.
#
# Usage: .ci/schemathesis.sh [path/to/kiln]   (default target/debug/kiln)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

SCHEMATHESIS_VERSION=4.32.5
KILN=${1:-target/debug/kiln}
# Examples per operation; raise it locally for a deeper run.
MAX_EXAMPLES=${SCHEMATHESIS_MAX_EXAMPLES:-100}

die() { echo "schemathesis.sh: $*" >&2; exit 1; }

[[ -x $KILN ]] || die "no kiln binary at $KILN: run cargo build (or cargo test) first"
if ! command -v schemathesis >/dev/null ||
    [[ $(schemathesis --version 2>/dev/null) != *"$SCHEMATHESIS_VERSION"* ]]; then
    python3 -m pip install --quiet "schemathesis==$SCHEMATHESIS_VERSION" ||
        die "cannot install schemathesis $SCHEMATHESIS_VERSION with pip"
    # pip puts the command beside this python's scripts, which a fresh
    # machine's PATH may not list (or list only through pyenv's shims).
    hash -r
    command -v schemathesis >/dev/null ||
        PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
    command -v schemathesis >/dev/null || die "schemathesis installed, but not found on PATH"
fi

work=$(mktemp -d -t kiln-schemathesis-XXXXXX)
pid=
token=
cleanup() {
    [[ -n $pid ]] && stop
    rm -rf "$work"
}
trap cleanup EXIT

# Starts kiln on a fresh config in $work/$1 and sets $admin to its admin URL.
start() {
    local dir=$work/$1
    mkdir -p "$dir/data"
    cat >"$dir/kiln.toml" <<TOML
[server]
listen = "127.0.0.1:0"
workers = 2
warm_timeout = "30s"

[admin]
listen = "127.0.0.1:0"

[pools.main]
kind = "sqlite"
url = "data/kiln.sqlite3"
max_size = 2
warm = 1

[log]
level = "info"

[app]
greeting = "Hello from schemathesis"
TOML
    env -u RUST_LOG NO_COLOR=1 "$KILN" "$dir/kiln.toml" 2>"$dir/stderr" &
    pid=$!
    local line=
    for _ in $(seq 300); do
        line=$(grep -m1 -o 'admin on [0-9.:]*' "$dir/stderr" || true)
        [[ -n $line ]] && break
        kill -0 "$pid" 2>/dev/null || { cat "$dir/stderr" >&2; die "kiln exited before it was ready"; }
        sleep 0.1
    done
    [[ -n $line ]] || { cat "$dir/stderr" >&2; die "kiln did not say it was ready in 30 s"; }
    admin="http://${line#admin on }/admin"
}

# Stops kiln: the process started here and, when a fuzzed POST /admin/restart
# handed over to a new one (not this shell's child), the one serving now.
stop() {
    local serving
    serving=$(curl -sf ${token:+-H "Authorization: Bearer $token"} "$admin/status" |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["pid"])' || true)
    kill "$pid" 2>/dev/null && wait "$pid" || true
    if [[ -n $serving && $serving != "$pid" ]]; then
        kill "$serving" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$serving" 2>/dev/null || break; sleep 0.1; done
    fi
    pid=
}

fuzz() {
    local name=$1
    shift
    echo "== schemathesis: $name"
    # From $work: schemathesis keeps a cache in its working directory.
    (cd "$work" && schemathesis --config-file "$root/.ci/schemathesis.toml" \
        run "$admin/openapi.json" --url "$admin" \
        --checks all --max-examples "$MAX_EXAMPLES" --seed 1 "$@") ||
        { echo "--- kiln's log ---" >&2; cat "$work/$name/stderr" >&2; die "$name: schemathesis found problems (above)"; }
}

start no-token
fuzz no-token
stop

token=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
KILN__ADMIN__TOKEN=$token start token
# At most 9 requests a second: failed authentications (schemathesis tries
# wrong tokens) then stay within the admin failure budget (10 at once, 10 a
# second after), which would answer 429 where the checks expect 401.
fuzz token --header "Authorization: Bearer $token" --rate-limit 9/s
stop
echo "schemathesis: no findings"
