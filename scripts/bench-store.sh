#!/usr/bin/env bash
# The fleet store, measured: ship rate (rows/s) of `cordon ship`, then `propose` and `diff` over
# the store and over the same rows in one SQLite ledger. Starts its own PostgreSQL (Debian's
# binaries, as tests/store.rs does) in a temporary directory on 127.0.0.1.
#   scripts/bench-store.sh [HOSTS] [EDGES_PER_HOST] [HOURS] [SERVICES]
# Defaults: 1000 hosts x 200 edges x 24 hourly buckets (4.8M rows) over 10,000 services.
set -euo pipefail
cd "$(dirname "$0")/.."
hosts=${1:-1000} edges=${2:-200} hours=${3:-24} services=${4:-10000}
cordon=${CORDON:-target/release/cordon}
[ -x "$cordon" ] || cargo build --release -q
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
work=$(mktemp -d /tmp/cordon-bench-store.XXXX)
trap 'runuser -u nobody -- "$bin/pg_ctl" -D "$work/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
chown nobody "$work"
echo secret >"$work/pw"; chown nobody "$work/pw"
runuser -u nobody -- "$bin/initdb" -D "$work/data" -U cordon --auth=scram-sha-256 --pwfile="$work/pw" --no-sync >/dev/null
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
runuser -u nobody -- "$bin/pg_ctl" -D "$work/data" -w -l "$work/log" -o "-c listen_addresses=127.0.0.1 -p $port -k $work" start >/dev/null
url="postgres://cordon@127.0.0.1:$port/postgres?password_file=$work/pw"

echo "== a ledger of $hosts hosts x $edges edges x $hours hours over $services services"
python3 - "$work/fleet.db" "$hosts" "$edges" "$hours" "$services" <<'PY'
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
printf '[modes]\n"*" = "learn"\n' >"$work/policy.toml"

t() { local s=$(date +%s.%N); "$@" >/dev/null; python3 -c "print(f'{$(date +%s.%N) - $s:.2f} s')"; }
echo "== cordon ship (first time, then again: nothing changes)"
rows=$(python3 -c "import sqlite3; print(sqlite3.connect('$work/fleet.db').execute('select count(*) from edge_hour').fetchone()[0])")
s=$(date +%s.%N); "$cordon" ship --db "$work/fleet.db" --to "$url" >/dev/null; e=$(date +%s.%N)
python3 -c "d=$e-$s; print(f'shipped $rows rows in {d:.1f} s: {$rows/d:,.0f} rows/s')"
s=$(date +%s.%N); "$cordon" ship --db "$work/fleet.db" --to "$url" >/dev/null; e=$(date +%s.%N)
python3 -c "d=$e-$s; print(f'shipped again in {d:.1f} s: {$rows/d:,.0f} rows/s')"
echo "== propose / diff over the store"
printf 'propose: '; t "$cordon" propose --db "$url"
printf 'diff:    '; t "$cordon" diff --db "$url" --policy "$work/policy.toml"
echo "== the same over the SQLite ledger"
printf 'propose: '; t "$cordon" propose --db "$work/fleet.db"
printf 'diff:    '; t "$cordon" diff --db "$work/fleet.db" --policy "$work/policy.toml"
