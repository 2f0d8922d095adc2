#!/usr/bin/env bash
# Interop with the real thing, on loopback:
#  (a) a host still on HAProxy reaches a cordon inbound listener over mTLS with a cordon-issued
#      client certificate (`server ... ssl crt ... ca-file ... verify required`) and is identified
#      as its service;
#  (b) cordon's outbound reaches a backend that HAProxy terminates with `verify required`, one
#      mTLS connection per app connection (HAProxy takes neither ALPN cordon-hop/2 nor /1);
#  (c) openssl s_client with a cordon certificate gets through; without one it is refused, and
#      the refusal is counted by reason; curl reads the admin endpoint;
#  (d) a Synapse-shaped HAProxy (`option tcplog` and `option httplog`, one service with a
#      `backend_name`) logs to a local syslog socket; cordon imports its haproxy.cfg and exactly
#      the lines HAProxy wrote, and the graph names every frontend.
# Installs haproxy (Debian) when it is missing. Exits non-zero on the first failed check.
set -euo pipefail
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null 2>&1; }
if ! need haproxy || ! need curl || ! need openssl; then
  echo "== installing haproxy, curl, openssl from Debian"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy curl openssl >/dev/null
fi
cargo build -q --bin cordon
CORDON=$PWD/target/debug/cordon

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
# send PORT MESSAGE: connect, send, half-close, print the whole reply.
send() {
  python3 - "$1" "$2" <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
s.sendall(sys.argv[2].encode()); s.shutdown(socket.SHUT_WR)
out = b""
while True:
    b = s.recv(65536)
    if not b: break
    out += b
sys.stdout.write(out.decode(errors="replace"))
PY
}
check() { # check NAME EXPECTED ACTUAL
  if [ "$2" = "$3" ]; then echo "ok   $1"; else echo "FAIL $1: expected '$2', got '$3'"; exit 1; fi
}
wait_http() {
  for _ in $(seq 1 100); do curl -fsS "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "FAIL: $1 never answered"; exit 1
}

APP=$(free_port); DB_IN=$(free_port); DB_ADMIN=$(free_port); HA_WEB=$(free_port)
HA_SEARCH=$(free_port); WEB_OUT=$(free_port); WEB_ADMIN=$(free_port)

# The app behind everything: an echo server.
python3 - "$APP" <<'PY' &
import socket, sys, threading
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", int(sys.argv[1]))); srv.listen(64)
def echo(c):
    while True:
        b = c.recv(65536)
        if not b: break
        c.sendall(b)
    c.shutdown(socket.SHUT_WR); c.close()
while True:
    c, _ = srv.accept(); threading.Thread(target=echo, args=(c,), daemon=True).start()
PY
PIDS+=($!)

TD=interop.internal
"$CORDON" ca init --dir "$WORK/ca" --trust-domain "$TD" >/dev/null
for s in db web search; do "$CORDON" cert issue --ca "$WORK/ca" --service "$s" --out "$WORK/tls/$s" >/dev/null; done
cat "$WORK/tls/web/cert.pem" "$WORK/tls/web/key.pem" > "$WORK/web.pem"
cat "$WORK/tls/search/cert.pem" "$WORK/tls/search/key.pem" > "$WORK/search.pem"

mkdir -p "$WORK/discovery"
cat > "$WORK/discovery/search.json" <<JSON
[{"host": "127.0.0.1", "port": $APP, "name": "search-1", "labels": {"cordon_mtls_port": "$HA_SEARCH"}}]
JSON
printf '[modes]\n"*" = "learn"\n' > "$WORK/policy.toml"

agent_config() { # NAME ADMIN then TOML body on stdin
  cat > "$WORK/$1.toml" <<TOML
trust_domain = "$TD"
discovery_dir = "$WORK/discovery"
policy = "$WORK/policy.toml"
state_dir = "$WORK/state-$1"
admin = "127.0.0.1:$2"
host = "$1-host"
[tls]
ca = "$WORK/ca/ca.pem"
dir = "$WORK/tls"
$(cat)
TOML
}
agent_config db "$DB_ADMIN" <<TOML
[[service]]
name = "db"
listen = "127.0.0.1:$DB_IN"
app = "127.0.0.1:$APP"
TOML
agent_config web "$WEB_ADMIN" <<TOML
[[upstream]]
service = "search"
listen = "127.0.0.1:$WEB_OUT"
identity = "web"
TOML

cat > "$WORK/haproxy.cfg" <<CFG
global
    maxconn 256
defaults
    mode tcp
    timeout connect 2s
    timeout client 10s
    timeout server 10s
# (a) the HAProxy of a host not yet on cordon, dialling db's cordon inbound with web's certificate
frontend web_local_db
    bind 127.0.0.1:$HA_WEB
    default_backend db
backend db
    server db1 127.0.0.1:$DB_IN ssl crt $WORK/web.pem ca-file $WORK/ca/ca.pem verify required
# (b) a service whose TLS HAProxy terminates, requiring a client certificate from our CA
frontend search_tls
    bind 127.0.0.1:$HA_SEARCH ssl crt $WORK/search.pem ca-file $WORK/ca/ca.pem verify required
    default_backend search_app
backend search_app
    server app 127.0.0.1:$APP
CFG
haproxy -c -q -f "$WORK/haproxy.cfg"
haproxy -db -f "$WORK/haproxy.cfg" 2>"$WORK/haproxy.log" &
PIDS+=($!)
"$CORDON" agent --config "$WORK/db.toml" 2>"$WORK/db.log" &
PIDS+=($!)
"$CORDON" agent --config "$WORK/web.toml" 2>"$WORK/web.log" &
PIDS+=($!)
wait_http "http://127.0.0.1:$DB_ADMIN/status"
wait_http "http://127.0.0.1:$WEB_ADMIN/status"

echo "== (a) HAProxy with a cordon client certificate -> cordon inbound"
check "echo through HAProxy -> cordon inbound -> app" "hello-a" "$(send "$HA_WEB" hello-a)"
metrics=$(curl -fsS "http://127.0.0.1:$DB_ADMIN/metrics")
seen=$(grep -c '^cordon_verdicts_total{destination="db",source="web",' <<<"$metrics" || true)
check "HAProxy's connection identified as service web" "1" "$seen"
check "a second connection from HAProxy (no ALPN) -> cordon inbound" "hello-a2" "$(send "$HA_WEB" hello-a2)"

echo "== (b) cordon outbound -> HAProxy terminating TLS with verify required"
check "echo through cordon outbound -> HAProxy -> app" "hello-b" "$(send "$WEB_OUT" hello-b)"
# cordon offers ALPN cordon-hop/2 and /1; HAProxy takes neither, so each app connection gets its own
# mTLS connection, and none rides a reused one.
check "a second connection through cordon outbound -> HAProxy" "hello-b2" "$(send "$WEB_OUT" hello-b2)"
reused=$(curl -fsS "http://127.0.0.1:$WEB_ADMIN/metrics" | grep '^cordon_hop_reused_total{' | awk '{s+=$2} END {print s+0}')
check "no connection reuse with a peer that is not cordon" "0" "$reused"

echo "== (c) openssl s_client and curl"
# Keep stdin open a moment: s_client quits at stdin's end, before the echo would come back.
got=$( (printf 'hello-c'; sleep 1) | timeout 10 openssl s_client -quiet -connect "127.0.0.1:$DB_IN" \
  -cert "$WORK/tls/web/cert.pem" -key "$WORK/tls/web/key.pem" -CAfile "$WORK/ca/ca.pem" \
  -verify_return_error 2>/dev/null || true)
check "openssl s_client with web's certificate" "hello-c" "$got"
printf 'nope' | timeout 10 openssl s_client -quiet -connect "127.0.0.1:$DB_IN" -CAfile "$WORK/ca/ca.pem" >/dev/null 2>&1 || true
refused=$(curl -fsS "http://127.0.0.1:$DB_ADMIN/metrics" | grep '^cordon_handshake_failures_total{direction="inbound",service="db",reason="no_certificate"}' | awk '{print $2}')
check "a client without a certificate is refused and counted" "1" "${refused:-0}"
curl -fsS "http://127.0.0.1:$DB_ADMIN/status" | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["services"][0]["name"]=="db"' \
  && echo "ok   curl reads /status"

echo "== (d) real HAProxy logs: tcplog and httplog through a local syslog socket"
SYSLOG=$(free_port); FE_DB=$(free_port); FE_PAY=$(free_port); FE_API=$(free_port); HTTP_APP=$(free_port)
# A syslog socket on loopback: one datagram, as HAProxy sent it, per line.
python3 - "$SYSLOG" "$WORK/syslog.log" <<'PY' &
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", int(sys.argv[1])))
with open(sys.argv[2], "ab", buffering=0) as f:
    while True:
        f.write(s.recv(65536).rstrip(b"\n") + b"\n")
PY
PIDS+=($!)
python3 -m http.server --bind 127.0.0.1 "$HTTP_APP" --directory "$WORK" >/dev/null 2>&1 &
PIDS+=($!)
# As Synapse's generator writes it; payments has `backend_name: payments_v2`.
cat > "$WORK/synapse-haproxy.cfg" <<CFG
global
	log 127.0.0.1:$SYSLOG local0
	maxconn 256

defaults
	log global
	timeout connect 2s
	timeout client 10s
	timeout server 10s

frontend db
	mode tcp
	option tcplog
	bind 127.0.0.1:$FE_DB
	default_backend db

backend db
	mode tcp
	server 127.0.0.1:${APP}_db-1 127.0.0.1:$APP

frontend payments
	mode tcp
	option tcplog
	bind 127.0.0.1:$FE_PAY
	default_backend payments_v2

backend payments_v2
	mode tcp
	server 127.0.0.1:${APP}_payments-1 127.0.0.1:$APP

frontend api
	mode http
	option httplog
	bind 127.0.0.1:$FE_API
	default_backend api

backend api
	mode http
	server 127.0.0.1:${HTTP_APP}_api-1 127.0.0.1:$HTTP_APP
CFG
haproxy -c -q -f "$WORK/synapse-haproxy.cfg"
haproxy -db -f "$WORK/synapse-haproxy.cfg" 2>"$WORK/synapse-haproxy.err" &
PIDS+=($!)
for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$FE_API/" >/dev/null 2>&1 && break; sleep 0.1; done
check "tcplog frontend db" "hello-d1" "$(send "$FE_DB" hello-d1)"
check "tcplog frontend payments (backend payments_v2)" "hello-d2" "$(send "$FE_PAY" hello-d2)"
curl -fsS "http://127.0.0.1:$FE_API/synapse-haproxy.cfg" >/dev/null && echo "ok   httplog frontend api"
for _ in $(seq 1 100); do
  [ "$(grep -c 'haproxy' "$WORK/syslog.log" 2>/dev/null || true)" -ge 4 ] && break; sleep 0.1
done
echo "   HAProxy wrote:"; sed 's/^/   | /' "$WORK/syslog.log"
"$CORDON" import haproxy-cfg --identity web --db "$WORK/synapse.db" --host web-1 "$WORK/synapse-haproxy.cfg" >/dev/null
"$CORDON" import haproxy-log --db "$WORK/synapse.db" --source web "$WORK/syslog.log" >/dev/null 2>"$WORK/import.err" \
  || { cat "$WORK/import.err"; exit 1; }
graph=$("$CORDON" graph --db "$WORK/synapse.db")
echo "$graph" | sed 's/^/   | /'
for fe in db payments api; do
  seen=$(awk -v fe="$fe" '$1 == "web" && $2 == fe && $3 == "haproxy-log" && $11 == "yes"' <<<"$graph" | wc -l)
  check "the graph names frontend $fe, imported and declared" "1" "$seen"
done
check "no edge names the backend payments_v2" "0" "$(grep -c payments_v2 <<<"$graph" || true)"
echo "interop: all checks passed"
