#!/usr/bin/env bash
# Renders a cordon report in headless Chromium (Debian's) and saves a PNG, to look at it as a
# person would.   usage: scripts/screenshot-report.sh REPORT.html OUT.png [WIDTHxHEIGHT]
set -euo pipefail
report=${1:?usage: screenshot-report.sh REPORT.html OUT.png [WIDTHxHEIGHT]}
out=${2:?usage: screenshot-report.sh REPORT.html OUT.png [WIDTHxHEIGHT]}
size=${3:-1440x900}
if ! command -v chromium >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
# The background-networking flags keep Chromium from dialling out on this closed network.
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$profile" --hide-scrollbars --window-size="${size/x/,}" \
  --screenshot="$(realpath -m "$out")" "file://$(realpath "$report")" 2>/dev/null
echo "wrote $out"
