#!/usr/bin/env bash
# The review page at 10 and 10,000 services, in headless Chromium. For each size: a synthetic
# ledger (examples/fleet_ledger.rs), `cordon report` (timed), the page's size (at most 8 MiB),
# then the overview and one service's focus view rendered, checked in the DOM the page's script
# built, and saved as PNGs. REPORT_SCALE_OUT=DIR keeps the screenshots (default: a temporary
# directory, removed). REPORT_SCALE_PROFILE=debug uses a debug build (CI: no release build; the
# times printed are then not the product's), REPORT_SCALE_HOURS the hours of traffic (default 20).
# Bounded: every browser run has a 60 s timeout.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${REPORT_SCALE_PROFILE:-release}
hours=${REPORT_SCALE_HOURS:-20}
if [ "$profile" = release ]; then
  cargo build -q --release --bin cordon --example fleet_ledger
else
  cargo build -q --bin cordon --example fleet_ledger
fi
bin=target/$profile
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
out=${REPORT_SCALE_OUT:-$work}
mkdir -p "$out"
fail() { echo "report-scale: $*" >&2; exit 1; }
# name:services:a service to focus on (one with several callers, one cut off)
for spec in small:10:catalog-0004 fleet:10000:auth-0013; do
  IFS=: read -r label services focus <<<"$spec"
  dir=$work/$label
  "$bin/examples/fleet_ledger" "$dir" "$services" "$hours" >/dev/null
  t0=$(date +%s%N)
  "$bin/cordon" report --db "$dir/ledger.db" --policy "$dir/policy.toml" --out "$dir/report.html" >/dev/null
  t1=$(date +%s%N)
  bytes=$(stat -c %s "$dir/report.html")
  [ "$bytes" -le $((8 * 1024 * 1024)) ] || fail "$label: the page is $bytes bytes, over 8 MiB"
  SCREENSHOT_DOM=$dir/overview.dom scripts/screenshot-report.sh "$dir/report.html" "$out/report-$label.png" >/dev/null
  SCREENSHOT_DOM=$dir/focus.dom scripts/screenshot-report.sh "$dir/report.html#service=$focus" \
    "$out/report-$label-focus.png" >/dev/null
  rendered=$(grep -o 'data-rendered-ms="[0-9]*"' "$dir/overview.dom" | grep -o '[0-9]*') ||
    fail "$label: the page's script did not finish"
  grep -q 'class="group not-ready"' "$dir/overview.dom" || fail "$label: no readiness groups drawn"
  grep -q '<tr class="not-ready" data-service=' "$dir/overview.dom" || fail "$label: no not-ready service listed"
  grep -q "<section id=\"focus\" data-service=\"$focus\"" "$dir/focus.dom" || fail "$label: no focus view of $focus"
  grep -q "class=\"edge-row [a-z-]*\" data-source=\"[^\"]*\" data-destination=\"$focus\"" "$dir/focus.dom" ||
    fail "$label: the focus view lists no caller of $focus"
  if [ "$services" -le 40 ]; then
    grep -q '<section id="picture">' "$dir/overview.dom" || fail "$label: a small page must show the whole graph"
  else
    ! grep -q '<section id="picture">' "$dir/overview.dom" || fail "$label: the whole graph drawn at $services services"
  fi
  printf '%-6s %6s services: report written in %4d ms, %7.2f MiB, script done %5d ms after navigation\n' \
    "$label" "$services" $(((t1 - t0) / 1000000)) "$(awk "BEGIN { print $bytes / 1048576 }")" "$rendered"
done
echo "screenshots in $out"
