#!/usr/bin/env bash
# cordon's mTLS hop against direct TCP and an HAProxy pair doing the same work, side by side on
# loopback, with ratios from the same run. BENCH_SECONDS (default 3) lengthens each measurement,
# BENCH_ROUNDS (default 3) the number of alternating rounds. Then the in-process benches.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v haproxy >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >/dev/null
fi
echo "== building (release)"
cargo build -q --release --bin cordon --example loadgen
python3 scripts/bench.py target/release/cordon target/release/examples/loadgen
if [ "${BENCH_INPROCESS:-1}" = 1 ]; then
  echo "== in-process"
  for b in policy ledger discovery handshake; do
    [ -f "benches/$b.rs" ] && cargo bench -q --bench "$b" 2>/dev/null | grep -v '^$' || true
  done
fi
