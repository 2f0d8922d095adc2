#!/usr/bin/env bash
# Builds every fuzz target under fuzz/ with libFuzzer and runs each for SECONDS (default 60).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# The stable toolchain is enough: libfuzzer-sys brings libFuzzer (built with the C++ compiler) and
# the coverage instrumentation is rustc's sanitizer-coverage pass, which needs no nightly flag. The
# corpus grows in fuzz/corpus/<target> (not committed); seeds are in fuzz/seeds/<target>. A crash
# stops the run with exit 1 and leaves the input in fuzz/artifacts/: fix it, and add a regression
# test that replays it.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-60}
shift || true
all=(discovery_json haproxy_cfg haproxy_log policy_toml cordon_toml hop_frames client_hello revocation_list)
targets=("$@")
if [ $# -eq 0 ]; then targets=("${all[@]}"); fi

host=$(rustc -vV | sed -n 's/^host: //p')
# The flags cargo-fuzz passes, less the (nightly-only) address sanitizer. --target keeps them off
# build scripts and proc macros.
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
cargo build --release --target "$host" --bins -q

mkdir -p artifacts
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  echo "== fuzz $t (${secs}s)"
  rc=0
  "target/$host/release/$t" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="artifacts/$t-" "corpus/$t" "seeds/$t" \
    >"artifacts/$t.log" 2>&1 || rc=$?
  grep -E '^(stat::number_of_executed_units|stat::new_units_added|Done [0-9]+ runs)' "artifacts/$t.log" || true
  if [ "$rc" -ne 0 ]; then
    tail -n 40 "artifacts/$t.log" >&2
    echo "fuzz target $t failed (exit $rc); the input is in fuzz/artifacts/" >&2
    exit 1
  fi
done
