#!/usr/bin/env bash
# kiln's benchmarks, in one command (issue 5):
#
#   crates/kiln-bench/run.sh
#
# Builds kiln and the benchmark programs in release, installs what is missing
# (oha from crates.io; wrk, and for the anchors nginx-light and caddy, from
# Debian; gunicorn from PyPI; valgrind from Debian; nstat from iproute2), then runs each
# measurement against loopback only (127.0.0.1), with bounded durations,
# variants interleaved A B A B over $RUNS rounds:
#
#   config-read  criterion: one config read per request, 6 mechanisms
#   overhead     kiln GET / vs bare axum at saturation, 1 and 2 workers,
#                shared listener vs SO_REUSEPORT (wrk)
#   instructions the same, as user-space instructions per request (callgrind)
#   db           GET /q (pool.get() + SELECT 1 on PostgreSQL): kiln vs axum and
#                actix-web with deadpool-postgres, 1 and 2 workers; then callgrind
#   coldstart    first wave vs steady waves against PostgreSQL, kiln vs lazy
#   startup      time to ready with 1/8/32 warm connections, direct and +100 ms/connect
#   reload       100 hot-key then 20 pool-rebuild reloads under oha -q at half
#                saturation, each window (and a control window) densified by a burst
#   save-to-serve  POST /admin/reload and a watched file save, end to end (no load)
#   anchors      30 reloads under 20k req/s: kiln vs Caddy, nginx, gunicorn, restarted axum
#   restart      20 restarts under 20k req/s: kiln POST /admin/restart vs nginx's
#                binary upgrade (USR2, QUIT) and bare axum killed and started again
#   memory       RSS before/after 1,000 hot-key and 100 pool-rebuild reloads
#   fleet        PATCH to every instance serving it (3 processes; 50 in one
#                process through the library) and PostgreSQL load at rest, on
#                a private PostgreSQL cluster (max_connections 300,
#                pg_stat_statements) started for it on $FLEET_PG_PORT
#
# Raw JSON and one markdown table per measurement go to target/bench/;
# target/bench/report.md gathers them (the tables of BENCHMARKS.md).
#
# Settings (environment):
#   RUNS=3                 rounds of each measurement (medians need >= 3)
#   OVERHEAD_RUNS=5        rounds of the overhead measurement (the noisiest)
#   SECTIONS="..."         a subset of the names above, space-separated
#   SERVER_CPUS=0          CPUs the server under test is pinned to
#   CLIENT_CPUS=1          CPUs the load generator is pinned to
#   PG_ADDR=127.0.0.1:5432 PostgreSQL (trust auth); PG_USER=postgres
#   QUICK=1                shorter criterion runs (a smoke test, not figures)
#
# reload loads at half of the rate overhead measured: run overhead first (or in
# the same call).
#
# A full run takes about 15 minutes on a 2-vCPU machine after the build.
set -uo pipefail

cd "$(dirname "$0")/../.."
ROOT=$(pwd)
OUT="$ROOT/target/bench"
RUNS=${RUNS:-3}
OVERHEAD_RUNS=${OVERHEAD_RUNS:-5}
SECTIONS=${SECTIONS:-"config-read overhead instructions db coldstart startup reload save-to-serve anchors restart memory fleet"}
FLEET_PG_PORT=${FLEET_PG_PORT:-5499}
SERVER_CPUS=${SERVER_CPUS:-0}
CLIENT_CPUS=${CLIENT_CPUS:-1}
PG_ADDR=${PG_ADDR:-127.0.0.1:5432}
PG_USER=${PG_USER:-postgres}
mkdir -p "$OUT"

say() { printf '\n== %s\n' "$*" >&2; }
wants() { [[ " $SECTIONS " == *" $1 "* ]]; }

# --- tools -------------------------------------------------------------------
export PATH="$HOME/.cargo/bin:$PATH"
command -v taskset >/dev/null || { echo "taskset is missing (util-linux)" >&2; exit 1; }
if ! command -v wrk >/dev/null; then
    say "installing wrk (Debian)"
    { apt-get update -qq && apt-get install -y -qq wrk; } >&2 || { echo "cannot install wrk" >&2; exit 1; }
fi
if { wants instructions || wants db; } && ! command -v callgrind_control >/dev/null; then
    say "installing valgrind (Debian)"
    { apt-get update -qq && apt-get install -y -qq valgrind; } >&2 || { echo "cannot install valgrind" >&2; exit 1; }
fi
if wants restart; then
    if ! command -v nginx >/dev/null; then
        say "installing the anchor nginx-light (Debian)"
        { apt-get update -qq && apt-get install -y -qq nginx-light; } >&2 || { echo "cannot install nginx-light" >&2; exit 1; }
    fi
    if ! command -v nstat >/dev/null; then
        say "installing nstat (iproute2, Debian)"
        { apt-get update -qq && apt-get install -y -qq iproute2; } >&2 || { echo "cannot install iproute2" >&2; exit 1; }
    fi
fi
if wants anchors; then
    for tool in nginx caddy; do
        command -v $tool >/dev/null && continue
        say "installing the anchors nginx-light and caddy (Debian)"
        { apt-get update -qq && apt-get install -y -qq nginx-light caddy; } >&2 ||
            { echo "cannot install nginx-light and caddy" >&2; exit 1; }
        break
    done
    if ! python3 -m gunicorn --version >/dev/null 2>&1; then
        say "installing the anchor gunicorn (pip)"
        python3 -m pip install -q gunicorn >&2 || { echo "cannot install gunicorn" >&2; exit 1; }
    fi
fi
if ! command -v oha >/dev/null; then
    say "installing oha (cargo install oha --locked)"
    cargo install oha --locked >&2 || { echo "cannot install oha" >&2; exit 1; }
fi

# --- build -------------------------------------------------------------------
say "building kiln and the benchmark programs (release)"
# One cargo call: two would unify features differently and rebuild tokio each time.
cargo build --release -p kiln-cli --bin kiln -p kiln-bench --bins >&2 || exit 1
BENCH="$ROOT/target/release/kiln-bench"
COMMON=(--bin-dir "$ROOT/target/release" --out "$OUT"
        --server-cpus "$SERVER_CPUS" --client-cpus "$CLIENT_CPUS"
        --pg-addr "$PG_ADDR" --pg-user "$PG_USER")

failed=()
section() { # name, then the command
    local name=$1; shift
    wants "$name" || return 0
    say "$name"
    local started=$SECONDS
    if "$@"; then
        echo "($name took $((SECONDS - started)) s)" >&2
    else
        echo "!! $name failed" >&2
        failed+=("$name")
    fi
}

if wants config-read; then
    if [[ -n "${QUICK:-}" ]]; then
        section config-read cargo bench -p kiln-bench --bench config_read -- \
            --warm-up-time 0.2 --measurement-time 0.5 --sample-size 10
    else
        section config-read cargo bench -p kiln-bench --bench config_read
    fi
fi

section overhead "$BENCH" "${COMMON[@]}" --runs "$OVERHEAD_RUNS" overhead
section instructions "$BENCH" "${COMMON[@]}" instructions

pg_ok=1
if wants db || wants coldstart || wants startup || wants reload || wants memory; then
    say "preparing the PostgreSQL database kiln_bench on $PG_ADDR"
    "$BENCH" "${COMMON[@]}" setup-db || { pg_ok=0; failed+=("setup-db (PostgreSQL at $PG_ADDR)"); }
fi
if [[ $pg_ok == 1 ]]; then
    section db "$BENCH" "${COMMON[@]}" --runs "$RUNS" db
    section coldstart "$BENCH" "${COMMON[@]}" --runs "$RUNS" coldstart
    section startup "$BENCH" "${COMMON[@]}" --runs "$RUNS" startup
    section reload "$BENCH" "${COMMON[@]}" --runs "$RUNS" reload
    section memory "$BENCH" "${COMMON[@]}" --runs "$RUNS" memory
fi

save_to_serve() {
    python3 "$ROOT/crates/kiln-bench/save_to_serve.py" "$ROOT/target/release/kiln" > "$OUT/save-to-serve.md"
}
section save-to-serve save_to_serve
section anchors "$BENCH" "${COMMON[@]}" --runs "$RUNS" anchors
section restart "$BENCH" "${COMMON[@]}" --runs "$RUNS" restart

# The fleet's 50 simulated instances hold 2 connections each, more than a
# default max_connections (100) leaves: a cluster of its own, thrown away after.
fleet() {
    local bin pgdata=/tmp/kiln-bench-fleet-pg
    bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
    rm -rf "$pgdata" && mkdir -p "$pgdata" && chown postgres "$pgdata"
    local as_pg=(); [[ $(id -u) == 0 ]] && as_pg=(runuser -u postgres --)
    "${as_pg[@]}" "$bin/initdb" -A trust -U postgres -D "$pgdata" >/dev/null || return 1
    "${as_pg[@]}" "$bin/pg_ctl" -D "$pgdata" -l "$pgdata/log" -w start -o \
        "-p $FLEET_PG_PORT -k /tmp -c max_connections=300 -c shared_preload_libraries=pg_stat_statements" >/dev/null || return 1
    local args=(--bin-dir "$ROOT/target/release" --out "$OUT"
                --pg-addr "127.0.0.1:$FLEET_PG_PORT" --pg-user postgres)
    "$BENCH" "${args[@]}" setup-db >/dev/null && "$BENCH" "${args[@]}" fleet
    local ok=$?
    "${as_pg[@]}" "$bin/pg_ctl" -D "$pgdata" -m fast stop >/dev/null
    rm -rf "$pgdata"
    return $ok
}
section fleet fleet

say "report"
"$BENCH" "${COMMON[@]}" report --criterion "$ROOT/target/criterion" >/dev/null
echo "tables: $OUT/report.md; raw JSON: $OUT/*.json" >&2
if ((${#failed[@]})); then
    echo "failed: ${failed[*]}" >&2
    exit 1
fi
