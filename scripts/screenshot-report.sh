#!/usr/bin/env bash
# Renders a cordon report in headless Chromium (Debian's) and saves a PNG, to look at it as a
# person would. A `#service=NAME` after the file opens that service's focus view.
#   usage: scripts/screenshot-report.sh REPORT.html[#service=NAME] OUT.png [WIDTHxHEIGHT]
# With SCREENSHOT_DOM=FILE it also writes the page as the script left it (for checks).
set -euo pipefail
report=${1:?usage: screenshot-report.sh REPORT.html[#service=NAME] OUT.png [WIDTHxHEIGHT]}
out=${2:?usage: screenshot-report.sh REPORT.html[#service=NAME] OUT.png [WIDTHxHEIGHT]}
size=${3:-1440x900}
file=${report%%#*}
fragment=${report#"$file"}
if ! command -v chromium >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
url="file://$(realpath "$file")$fragment"
shot() {
  local profile
  profile=$(mktemp -d)
  # The background-networking flags keep Chromium from dialling out on this closed network.
  timeout 60 chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$profile" --hide-scrollbars --window-size="${size/x/,}" "$@" "$url" 2>/dev/null
  rm -rf "$profile"
}
shot --screenshot="$(realpath -m "$out")" >/dev/null
if [ -n "${SCREENSHOT_DOM:-}" ]; then
  shot --dump-dom >"$SCREENSHOT_DOM"
fi
echo "wrote $out"
