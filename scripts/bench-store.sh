#!/usr/bin/env bash
# The fleet store, measured with a release build on 127.0.0.1; starts its own PostgreSQL
# (Debian's binaries, as tests/store.rs does) in a temporary directory:
#   1. ship rate (rows/s) of `cordon ship`: a ledger of HOSTS x EDGES x HOURS rows, shipped, then
#      shipped again (nothing changes);
#   2. `propose` and `diff` over a store of REVIEW_HOSTS x REVIEW_EDGES x HOURS edge-hours over
#      SERVICES services, and over the same rows in one SQLite ledger;
#   3. the agent's extra CPU per shipped row: a `cordon agent` process shipping a ledger of
#      CPU_ROWS rows against the same agent not shipping, over the same wall time
#      (/proc/PID/stat utime+stime), divided by the rows.
#   scripts/bench-store.sh [HOSTS] [EDGES_PER_HOST] [HOURS] [SERVICES]
# Defaults: 1000 hosts x 200 edges x 24 hourly buckets (4.8M rows) over 10,000 services;
# REVIEW_HOSTS=1000 REVIEW_EDGES=42 (1M edge-hours), CPU_ROWS=200000. SKIP_SHIP=1 skips part 1,
# SKIP_CPU=1 part 3. Part 2 fails unless the store's output equals the ledger's.
set -euo pipefail
cd "$(dirname "$0")/.."
hosts=${1:-1000} edges=${2:-200} hours=${3:-24} services=${4:-10000}
review_hosts=${REVIEW_HOSTS:-1000} review_edges=${REVIEW_EDGES:-42} cpu_rows=${CPU_ROWS:-200000}
cordon=${CORDON:-target/release/cordon}
[ -x "$cordon" ] || cargo build --release -q -p cordon
cordon=$(realpath "$cordon")
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
work=$(mktemp -d /tmp/cordon-bench-store.XXXX)
cleanup() {
    [ -n "${agent_pid:-}" ] && kill "$agent_pid" 2>/dev/null || true
    runuser -u nobody -- "$bin/pg_ctl" -D "$work/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
chown nobody "$work"
echo secret >"$work/pw"; chown nobody "$work/pw"; chmod 600 "$work/pw"
runuser -u nobody -- "$bin/initdb" -D "$work/data" -U cordon --auth=scram-sha-256 --pwfile="$work/pw" --no-sync >/dev/null
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
runuser -u nobody -- "$bin/pg_ctl" -D "$work/data" -w -l "$work/log" -o "-c listen_addresses=127.0.0.1 -p $port -k $work" start >/dev/null
createdb() { PGPASSWORD=secret "$bin/createdb" -h 127.0.0.1 -p "$port" -U cordon "$1"; }
url() { echo "postgres://cordon@127.0.0.1:$port/$1?password_file=$work/pw"; }

# gen.py PATH HOSTS EDGES HOURS SERVICES: a ledger (schema version 3) of HOSTS x EDGES x HOURS rows.
cat >"$work/gen.py" <<'PY'
import random, sqlite3, sys
path, hosts, edges, hours, services = sys.argv[1], *map(int, sys.argv[2:])
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
rnd = random.Random(1)
start = 495_000
def rows():
    for h in range(hosts):
        dst = f"svc-{rnd.randrange(services)}"
        srcs = {f"svc-{rnd.randrange(services)}" for _ in range(edges)}
        for s in srcs:
            for hr in range(start, start + hours):
                ms = hr * 3_600_000
                yield (f"host-{h}", hr, s, dst, "mtls", "learn", "allow", 5, 500, 5000, ms, ms + 1000)
db.executemany("INSERT INTO edge_hour VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", rows())
db.commit()
print(db.execute("SELECT count(*) FROM edge_hour").fetchone()[0], "rows")
PY
rows_of() { python3 -c "import sqlite3; print(sqlite3.connect('$1').execute('select count(*) from edge_hour').fetchone()[0])"; }
# t CMD...: wall time, and CPU time of the command plus PostgreSQL's (its postmaster's own and
# reaped children's times, read from /proc), steadier than wall time on a shared machine.
t() {
    python3 - "$(head -1 "$work/data/postmaster.pid")" "$@" <<'PY'
import os, resource, subprocess, sys, time
pm, cmd = sys.argv[1], sys.argv[2:]
tick = os.sysconf("SC_CLK_TCK")
def pg():
    with open(f"/proc/{pm}/stat") as f:
        x = f.read().rsplit(")", 1)[1].split()
    return sum(int(v) for v in x[11:15]) / tick
def me():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime
p0, c0, w0 = pg(), me(), time.monotonic()
with open(os.environ.get("BENCH_OUT", os.devnull), "w") as out:
    subprocess.run(cmd, stdout=out, check=True)
w, c = time.monotonic() - w0, me() - c0
time.sleep(0.2)  # the server reaps the session's process
print(f"{w:.2f} s wall; CPU {c:.2f} s cordon + {pg() - p0:.2f} s PostgreSQL")
PY
}
ship() { # LEDGER DB WHAT
    local rows s e; rows=$(rows_of "$1")
    s=$(date +%s.%N); "$cordon" ship --db "$1" --to "$(url "$2")" >/dev/null; e=$(date +%s.%N)
    python3 -c "d=$e-$s; print(f'$3: $rows rows in {d:.1f} s: {$rows/d:,.0f} rows/s')"
}

if [ "${SKIP_SHIP:-}" != 1 ]; then
    echo "== 1. cordon ship: a ledger of $hosts hosts x $edges edges x $hours hours over $services services"
    python3 "$work/gen.py" "$work/fleet.db" "$hosts" "$edges" "$hours" "$services"
    createdb fleet
    ship "$work/fleet.db" fleet "shipped"
    ship "$work/fleet.db" fleet "shipped again (nothing changes)"
    rm -f "$work/fleet.db"
fi

echo "== 2. propose / diff: $review_hosts hosts x $review_edges edges x $hours hours over $services services"
python3 "$work/gen.py" "$work/review.db" "$review_hosts" "$review_edges" "$hours" "$services"
createdb review
ship "$work/review.db" review "shipped"
printf '[modes]\n"*" = "learn"\n' >"$work/policy.toml"
for db in "$(url review)" "$work/review.db"; do
    case $db in postgres://*) where=store; echo "over the store:";; *) where=sqlite; echo "over the SQLite ledger:";; esac
    printf '  propose: '; BENCH_OUT="$work/propose.$where" t "$cordon" propose --db "$db"
    printf '  diff:    '; BENCH_OUT="$work/diff.$where" t "$cordon" diff --db "$db" --policy "$work/policy.toml"
done
# The same answer from both (propose's first line names its source).
cmp -s <(tail -n +2 "$work/propose.store") <(tail -n +2 "$work/propose.sqlite") && cmp -s "$work/diff.store" "$work/diff.sqlite" \
    && echo "the store's output is identical to the ledger's" || { echo "the store's output differs from the ledger's"; exit 1; }
rm -f "$work/review.db"
[ "${SKIP_CPU:-}" = 1 ] && exit 0

echo "== 3. the agent's CPU per shipped row: a ledger of about $cpu_rows rows"
per_host_rows=$((200 * 24 * 10))
python3 "$work/gen.py" "$work/cpu.db" $(( (cpu_rows + per_host_rows - 1) / per_host_rows )) 200 240 "$services" >/dev/null
cpu_rows=$(rows_of "$work/cpu.db")
createdb cpu
"$cordon" ca init --dir "$work/ca" --trust-domain bench.internal >/dev/null
"$cordon" cert issue --ca "$work/ca" --service db --out "$work/tls/db" >/dev/null
mkdir -p "$work/discovery"
agent_cpu() { # NAME FLEET(0|1) WALL_SECONDS(0 = until shipped): prints "cpu_seconds wall_seconds"
    local dir="$work/$1" admin; mkdir -p "$dir/state"; cp "$work/cpu.db" "$dir/state/ledger.db"
    admin=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    cat >"$dir/cordon.toml" <<TOML
trust_domain = "bench.internal"
discovery_dir = "$work/discovery"
policy = "$work/policy.toml"
state_dir = "$dir/state"
admin = "127.0.0.1:$admin"
[tls]
ca = "$work/tls/db/ca.pem"
dir = "$work/tls"
[[service]]
name = "db"
listen = "127.0.0.1:0"
app = "127.0.0.1:9"
TOML
    [ "$2" = 1 ] && printf '[fleet]\nstore = "postgres://cordon@127.0.0.1:%s/cpu"\npassword_file = "%s"\nship_interval_ms = 200\n' "$port" "$work/pw" >>"$dir/cordon.toml"
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
thread = 0.0
with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as r:
    for line in r.read().decode().splitlines():
        if line.startswith("cordon_store_shipper_cpu_seconds_total"):
            thread = float(line.split()[-1])
print(f"{cpu():.2f} {time.monotonic() - t0:.2f} {thread:.2f}")
PY
    kill "$agent_pid"; wait "$agent_pid" 2>/dev/null || true; agent_pid=
}
read -r ship_cpu ship_wall ship_thread < <(agent_cpu shipping 1 0)
read -r idle_cpu idle_wall _ < <(agent_cpu idle 0 "$ship_wall")
python3 -c "
rows=$cpu_rows; d=$ship_cpu-$idle_cpu
print(f'agent shipping {rows} rows: {$ship_cpu:.2f} s CPU in {$ship_wall:.1f} s; not shipping, same ledger: {$idle_cpu:.2f} s CPU in {$idle_wall:.1f} s')
print(f'extra CPU per shipped row: {d / rows * 1e6:.1f} us ({rows / $ship_wall:,.0f} rows/s shipped by the agent)')
print(f'the shipper thread alone (cordon_store_shipper_cpu_seconds_total): {$ship_thread:.2f} s, {$ship_thread / rows * 1e6:.1f} us per row')"
