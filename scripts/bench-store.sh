#!/usr/bin/env bash
# The fleet store, measured with a release build on 127.0.0.1; starts its own PostgreSQL
# (Debian's binaries, as tests/store.rs does) in a temporary directory:
#   1. ship rate (rows/s) of `cordon ship --to postgres://` (operator credentials): a ledger of
#      HOSTS x EDGES x HOURS rows, shipped, then shipped again (nothing changes);
#   1b. the ingest rate: one host's ledger of INGEST_ROWS rows (destination `db`, the identity of
#      host `bench-host`; INGEST_SOURCES sources x as many past hours as that takes), shipped
#      (a) through `cordon store serve` with `cordon ship --to https://ADDR --config AGENT.toml`
#      (the host's leaf, every row checked and stamped, written by a cordon_ingest login) and
#      (b) the same file with `cordon ship --to postgres://` (operator credentials) into another
#      database: rows/s of both, the ratio, and CPU (cordon, PostgreSQL, the service) per row;
#   2. `propose` and `diff` over a store of REVIEW_HOSTS x REVIEW_EDGES x HOURS edge-hours over
#      SERVICES services, and over the same rows in one SQLite ledger;
#   3. the agent's extra CPU per shipped row: a `cordon agent` (host `bench-host`, identity `db`)
#      shipping a ledger of CPU_ROWS rows through its own ingest service against the same agent
#      not shipping, over the same wall time (/proc/PID/stat utime+stime), divided by the rows.
#   scripts/bench-store.sh [HOSTS] [EDGES_PER_HOST] [HOURS] [SERVICES]
# Defaults: 1000 hosts x 200 edges x 24 hourly buckets (4.8M rows) over 10,000 services;
# INGEST_ROWS=1000000 INGEST_SOURCES=1000; REVIEW_HOSTS=1000 REVIEW_EDGES=42 (1M edge-hours);
# CPU_ROWS=200000. SKIP_SHIP=1 skips part 1, SKIP_INGEST=1 part 1b, SKIP_REVIEW=1 part 2,
# SKIP_CPU=1 part 3. Part 2 fails unless the store's output equals the ledger's; part 1b unless
# both databases hold every row (through the service, all as seen).
# CPU is read from /proc: cordon's as the child of the timing script; PostgreSQL's as its
# postmaster's own and reaped children's times plus those of its live backends (the service keeps
# its connections open); the service's from its /proc/PID/stat.
set -euo pipefail
cd "$(dirname "$0")/.."
hosts=${1:-1000} edges=${2:-200} hours=${3:-24} services=${4:-10000}
review_hosts=${REVIEW_HOSTS:-1000} review_edges=${REVIEW_EDGES:-42} cpu_rows=${CPU_ROWS:-200000}
ingest_rows=${INGEST_ROWS:-1000000} ingest_sources=${INGEST_SOURCES:-1000}
cordon=${CORDON:-target/release/cordon}
[ -x "$cordon" ] || cargo build --release -q -p cordon
cordon=$(realpath "$cordon")
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
work=$(mktemp -d /tmp/cordon-bench-store.XXXX)
serve_pids=
cleanup() {
    [ -n "${agent_pid:-}" ] && kill "$agent_pid" 2>/dev/null || true
    for pid in $serve_pids; do kill "$pid" 2>/dev/null || true; done
    runuser -u nobody -- "$bin/pg_ctl" -D "$work/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
chown nobody "$work"
echo secret >"$work/pw"; chown nobody "$work/pw"; chmod 600 "$work/pw"
runuser -u nobody -- "$bin/initdb" -D "$work/data" -U cordon --auth=scram-sha-256 --pwfile="$work/pw" --no-sync >/dev/null
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
runuser -u nobody -- "$bin/pg_ctl" -D "$work/data" -w -l "$work/log" -o "-c listen_addresses=127.0.0.1 -p $port -k $work" start >/dev/null
createdb() { PGPASSWORD=secret "$bin/createdb" -h 127.0.0.1 -p "$port" -U cordon "$1"; }
psql() { PGPASSWORD=secret "$bin/psql" -h 127.0.0.1 -p "$port" -U cordon -d "$1" -qAtc "$2"; }
url() { echo "postgres://cordon@127.0.0.1:$port/$1?password_file=$work/pw"; }
# store_init DB: a new database DB with `cordon store init` (its notices only on failure).
store_init() {
    createdb "$1"
    "$cordon" store init --db "$(url "$1")" >/dev/null 2>"$work/init.log" || { cat "$work/init.log" >&2; exit 1; }
}
printf '[modes]\n"*" = "learn"\n' >"$work/policy.toml"

# gen.py fleet PATH HOSTS EDGES HOURS SERVICES: a ledger (schema version 3) of HOSTS x EDGES x
# HOURS rows. gen.py host PATH ROWS SOURCES: bench-host's own ledger of ROWS rows, every one into
# its identity `db` (what the ingest service takes from it as seen) from SOURCES callers, over as
# many hours before the current one as that takes.
cat >"$work/gen.py" <<'PY'
import random, sqlite3, sys, time
kind, path, args = sys.argv[1], sys.argv[2], list(map(int, sys.argv[3:]))
db = sqlite3.connect(path)
db.executescript("""
CREATE TABLE edge_hour (host TEXT NOT NULL, hour INTEGER NOT NULL, source TEXT NOT NULL,
  destination TEXT NOT NULL, identified TEXT NOT NULL, mode TEXT NOT NULL, verdict TEXT NOT NULL,
  connections INTEGER NOT NULL, bytes_to_destination INTEGER NOT NULL, bytes_to_source INTEGER NOT NULL,
  first_seen INTEGER NOT NULL, last_seen INTEGER NOT NULL,
  PRIMARY KEY (host, hour, source, destination, identified, mode, verdict)) WITHOUT ROWID;
CREATE TABLE imported_prefix (len INTEGER NOT NULL, sha256 BLOB NOT NULL, lines INTEGER NOT NULL,
  file TEXT NOT NULL, imported_at INTEGER NOT NULL, PRIMARY KEY (len, sha256)) WITHOUT ROWID;
PRAGMA user_version = 3;""")
def row(host, hr, source, destination):
    ms = hr * 3_600_000
    return (host, hr, source, destination, "mtls", "learn", "allow", 5, 500, 5000, ms, ms + 1000)
def fleet(hosts, edges, hours, services):
    rnd = random.Random(1)
    start = 495_000
    for h in range(hosts):
        dst = f"svc-{rnd.randrange(services)}"
        srcs = {f"svc-{rnd.randrange(services)}" for _ in range(edges)}
        for s in srcs:
            for hr in range(start, start + hours):
                yield row(f"host-{h}", hr, s, dst)
def host(rows, sources):
    now = int(time.time()) // 3600
    hours = -(-rows // sources)
    for i in range(rows):
        yield row("bench-host", now - hours + i // sources, f"svc-{i % sources}", "db")
db.executemany("INSERT INTO edge_hour VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", {"fleet": fleet, "host": host}[kind](*args))
db.commit()
print(db.execute("SELECT count(*) FROM edge_hour").fetchone()[0], "rows")
PY
rows_of() { python3 -c "import sqlite3; print(sqlite3.connect('$1').execute('select count(*) from edge_hour').fetchone()[0])"; }

# t CMD...: wall time, and CPU time of the command, of PostgreSQL (its postmaster's own and reaped
# children's times plus its live children's: the ingest service's backends stay connected) and,
# with BENCH_SERVICE_PID, of that process (the ingest service), read from /proc; steadier than
# wall time on a shared machine. BENCH_OUT takes the command's stdout, BENCH_JSON the figures.
cat >"$work/t.py" <<'PY'
import json, os, resource, subprocess, sys, time
pm, cmd = int(sys.argv[1]), sys.argv[2:]
svc = os.environ.get("BENCH_SERVICE_PID")
tick = os.sysconf("SC_CLK_TCK")
def stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()
def pg():
    total = 0
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                x = stat(d)
            except OSError:
                continue
            if int(x[1]) == pm:
                total += sum(int(v) for v in x[11:15])
    return (total + sum(int(v) for v in stat(pm)[11:15])) / tick
def service():
    return sum(int(v) for v in stat(svc)[11:13]) / tick if svc else 0.0
def me():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime
p0, s0, c0, w0 = pg(), service(), me(), time.monotonic()
with open(os.environ.get("BENCH_OUT", os.devnull), "w") as out:
    subprocess.run(cmd, stdout=out, check=True)
w, c = time.monotonic() - w0, me() - c0
time.sleep(0.2)  # the server reaps the session's process
p, s = pg() - p0, service() - s0
print(f"{w:.2f} s wall; CPU {c:.2f} s cordon + {p:.2f} s PostgreSQL" + (f" + {s:.2f} s the ingest service" if svc else ""))
with open(os.environ.get("BENCH_JSON", os.devnull), "w") as f:
    json.dump({"wall": w, "cordon": c, "postgres": p, "service": s if svc else None}, f)
PY
t() { python3 "$work/t.py" "$(head -1 "$work/data/postmaster.pid")" "$@"; }
# rate.py WHAT ROWS JSON: rows/s and CPU per row of one timed run.
cat >"$work/rate.py" <<'PY'
import json, sys
what, rows, r = sys.argv[1], int(sys.argv[2]), json.load(open(sys.argv[3]))
cpu = r["cordon"] + r["postgres"] + (r["service"] or 0)
svc = f" + {r['service']:.2f} s the ingest service" if r["service"] is not None else ""
print(f"{what}: {rows:,} rows in {r['wall']:.1f} s: {rows / r['wall']:,.0f} rows/s; "
      f"CPU {r['cordon']:.2f} s cordon + {r['postgres']:.2f} s PostgreSQL{svc} = {cpu / rows * 1e6:.1f} us per row")
PY
ship() { # LEDGER DB WHAT
    local rows; rows=$(rows_of "$1")
    BENCH_JSON="$work/ship.json" t "$cordon" ship --db "$1" --to "$(url "$2")" >/dev/null
    python3 "$work/rate.py" "$3" "$rows" "$work/ship.json"
}

# Once: the CA, the ingest service's leaf (host store-host) and bench-host's leaf for `db`.
tls_setup() {
    [ -d "$work/ca" ] && return
    "$cordon" ca init --dir "$work/ca" --trust-domain bench.internal >/dev/null
    "$cordon" cert issue --ca "$work/ca" --service cordon-store --host store-host --out "$work/store-tls/cordon-store" >/dev/null
    "$cordon" cert issue --ca "$work/ca" --service db --host bench-host --out "$work/tls/db" >/dev/null
    mkdir -p "$work/discovery"
}
# serve DB: a new database DB with `cordon store init`, and `cordon store serve` on it as a login
# in cordon_ingest; sets serve_addr and serve_pid.
serve() {
    tls_setup
    store_init "$1"
    if [ ! -f "$work/ingest-pw" ]; then
        psql "$1" "CREATE ROLE ingest_svc LOGIN PASSWORD 'ingest-secret'; GRANT cordon_ingest TO ingest_svc"
        (umask 077; echo ingest-secret >"$work/ingest-pw")
    fi
    "$cordon" store serve --db "postgres://ingest_svc@127.0.0.1:$port/$1?password_file=$work/ingest-pw" \
        --listen 127.0.0.1:0 --ca "$work/ca/ca.pem" --tls-dir "$work/store-tls" >"$work/serve-$1.out" 2>"$work/serve-$1.log" &
    serve_pid=$!; serve_pids="$serve_pids $serve_pid"
    serve_addr=
    for _ in $(seq 600); do
        serve_addr=$(sed -n 's/^listening on //p' "$work/serve-$1.out")
        [ -n "$serve_addr" ] && break
        kill -0 "$serve_pid" 2>/dev/null || break
        sleep 0.1
    done
    [ -n "$serve_addr" ] || { echo "the ingest service did not start:" >&2; cat "$work/serve-$1.log" >&2; exit 1; }
}
# agent_toml DIR [FLEET]: bench-host's cordon.toml in DIR (state in DIR/state), serving `db`, with
# the [fleet] section FLEET; prints its admin port.
agent_toml() {
    local admin; admin=$(free_port); mkdir -p "$1/state"
    cat >"$1/cordon.toml" <<TOML
trust_domain = "bench.internal"
host = "bench-host"
discovery_dir = "$work/discovery"
policy = "$work/policy.toml"
state_dir = "$1/state"
admin = "127.0.0.1:$admin"
[tls]
ca = "$work/ca/ca.pem"
dir = "$work/tls"
[[service]]
name = "db"
listen = "127.0.0.1:0"
app = "127.0.0.1:9"
TOML
    printf '%s' "${2:-}" >>"$1/cordon.toml"
    echo "$admin"
}

if [ "${SKIP_SHIP:-}" != 1 ]; then
    echo "== 1. cordon ship --to postgres://: a ledger of $hosts hosts x $edges edges x $hours hours over $services services"
    python3 "$work/gen.py" fleet "$work/fleet.db" "$hosts" "$edges" "$hours" "$services"
    createdb fleet
    ship "$work/fleet.db" fleet "shipped"
    ship "$work/fleet.db" fleet "shipped again (nothing changes)"
    rm -f "$work/fleet.db"
fi

if [ "${SKIP_INGEST:-}" != 1 ]; then
    echo "== 1b. the ingest rate: bench-host's ledger, $ingest_rows rows into db from $ingest_sources sources"
    python3 "$work/gen.py" host "$work/host.db" "$ingest_rows" "$ingest_sources"
    rows=$(rows_of "$work/host.db")
    serve ingest
    agent_toml "$work/ship-as-host" >/dev/null
    BENCH_OUT="$work/ship-https.out" BENCH_JSON="$work/https.json" BENCH_SERVICE_PID=$serve_pid \
        t "$cordon" ship --db "$work/host.db" --to "https://$serve_addr" --config "$work/ship-as-host/cordon.toml" >/dev/null
    python3 "$work/rate.py" "(a) through the ingest service (cordon ship --to https://)" "$rows" "$work/https.json"
    store_init direct
    BENCH_OUT="$work/ship-direct.out" BENCH_JSON="$work/direct.json" \
        t "$cordon" ship --db "$work/host.db" --to "$(url direct)" >/dev/null
    python3 "$work/rate.py" "(b) straight to PostgreSQL (cordon ship --to postgres://)" "$rows" "$work/direct.json"
    python3 -c "
import json; a, b = (json.load(open(f'$work/{n}.json')) for n in ('https', 'direct'))
cpu = lambda r: r['cordon'] + r['postgres'] + (r['service'] or 0)
print(f'through the service / straight: {b[\"wall\"] / a[\"wall\"]:.2f} x the rate, {cpu(a) / cpu(b):.2f} x the CPU')"
    seen=$(psql ingest "SELECT count(*) FROM edge_hour WHERE host = 'bench-host' AND shipper = 'db' AND evidence = 'seen'")
    direct=$(psql direct "SELECT count(*) FROM edge_hour")
    if [ "$seen" != "$rows" ] || [ "$direct" != "$rows" ]; then
        echo "the stores hold $seen (through the service, seen) and $direct (straight) of $rows rows:"
        cat "$work/ship-https.out" "$work/ship-direct.out"; exit 1
    fi
    rm -f "$work/host.db"
fi

if [ "${SKIP_REVIEW:-}" != 1 ]; then
    echo "== 2. propose / diff: $review_hosts hosts x $review_edges edges x $hours hours over $services services"
    python3 "$work/gen.py" fleet "$work/review.db" "$review_hosts" "$review_edges" "$hours" "$services"
    createdb review
    ship "$work/review.db" review "shipped"
    for db in "$(url review)" "$work/review.db"; do
        case $db in postgres://*) where=store; echo "over the store:";; *) where=sqlite; echo "over the SQLite ledger:";; esac
        printf '  propose: '; BENCH_OUT="$work/propose.$where" t "$cordon" propose --db "$db"
        printf '  diff:    '; BENCH_OUT="$work/diff.$where" t "$cordon" diff --db "$db" --policy "$work/policy.toml"
    done
    # The same answer from both (propose's first line names its source).
    cmp -s <(tail -n +2 "$work/propose.store") <(tail -n +2 "$work/propose.sqlite") && cmp -s "$work/diff.store" "$work/diff.sqlite" \
        && echo "the store's output is identical to the ledger's" || { echo "the store's output differs from the ledger's"; exit 1; }
    rm -f "$work/review.db"
fi
[ "${SKIP_CPU:-}" = 1 ] && exit 0

echo "== 3. the agent's CPU per shipped row (through the ingest service): bench-host's ledger of $cpu_rows rows"
python3 "$work/gen.py" host "$work/cpu.db" "$cpu_rows" 200 >/dev/null
cpu_rows=$(rows_of "$work/cpu.db")
serve cpu
proc_cpu() { python3 -c "import os; x=open('/proc/$1/stat').read().rsplit(')', 1)[1].split(); print((int(x[11]) + int(x[12])) / os.sysconf('SC_CLK_TCK'))"; }
# agent_cpu NAME FLEET(0|1) WALL_SECONDS (0: until all is shipped): prints its CPU seconds, the
# seconds measured and its shipper thread's CPU seconds.
agent_cpu() {
    local dir="$work/$1" admin fleet=
    [ "$2" = 1 ] && fleet=$(printf '[fleet]\nstore = "https://%s"\nship_interval_ms = 200\n' "$serve_addr")
    admin=$(agent_toml "$dir" "$fleet")
    cp "$work/cpu.db" "$dir/state/ledger.db"
    "$cordon" agent --config "$dir/cordon.toml" >/dev/null 2>"$dir/agent.log" &
    agent_pid=$!
    timeout 900 python3 - "$agent_pid" "$admin" "$3" "$cpu_rows" <<'PY'
import json, os, sys, time, urllib.request
pid, admin, wall, rows = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
tick = os.sysconf("SC_CLK_TCK")
def cpu():
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / tick
def status():
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/status", timeout=5) as r:
        return json.load(r)
t0 = time.monotonic()
while True:
    try:
        s = status()
        break
    except OSError:
        time.sleep(0.05)
    if time.monotonic() - t0 > 60: sys.exit("the agent did not start")
while True:
    done = time.monotonic() - t0 >= wall if wall > 0 else (
        (s.get("fleet_store") or {}).get("rows_shipped", 0) >= rows
        and s["fleet_store"]["rows_waiting"] == 0)
    if done: break
    time.sleep(0.1)
    s = status()
# The shipper thread's own CPU, from /proc: /metrics' cordon_store_shipper_cpu_seconds_total
# gives it in whole seconds.
thread = 0
for task in os.listdir(f"/proc/{pid}/task"):
    with open(f"/proc/{pid}/task/{task}/stat") as f:
        x = f.read()
    if x[x.index("(") + 1 : x.rindex(")")] == "cordon-shipper":
        fields = x.rsplit(")", 1)[1].split()
        thread += int(fields[11]) + int(fields[12])
print(f"{cpu():.2f} {time.monotonic() - t0:.2f} {thread / tick:.2f}")
PY
    kill "$agent_pid"; wait "$agent_pid" 2>/dev/null || true; agent_pid=
}
service0=$(proc_cpu "$serve_pid")
read -r ship_cpu ship_wall ship_thread < <(agent_cpu shipping 1 0)
service1=$(proc_cpu "$serve_pid")
read -r idle_cpu idle_wall _ < <(agent_cpu idle 0 "$ship_wall")
seen=$(psql cpu "SELECT count(*) FROM edge_hour WHERE host = 'bench-host' AND shipper = 'db' AND evidence = 'seen'")
[ "$seen" = "$cpu_rows" ] || { echo "the store holds $seen of the agent's $cpu_rows rows"; exit 1; }
python3 -c "
rows=$cpu_rows; d=$ship_cpu-$idle_cpu
print(f'agent shipping {rows} rows: {$ship_cpu:.2f} s CPU in {$ship_wall:.1f} s; not shipping, same ledger: {$idle_cpu:.2f} s CPU in {$idle_wall:.1f} s')
print(f'extra CPU per shipped row: {d / rows * 1e6:.1f} us ({rows / $ship_wall:,.0f} rows/s shipped by the agent)')
print(f'the shipper thread alone (/proc/PID/task, thread cordon-shipper): {$ship_thread:.2f} s, {$ship_thread / rows * 1e6:.1f} us per row')
print(f'the ingest service meanwhile: {$service1 - $service0:.2f} s CPU, {($service1 - $service0) / rows * 1e6:.1f} us per row')"
