#!/usr/bin/env bash
# Checks cordon's Prometheus rules (deploy/prometheus) with Debian's promtool: the rules parse,
# and every alerting and recording rule passes its unit tests. That the metric names and labels
# they use are cordon's real ones is checked by tests/alerts.rs against a live scrape.
set -euo pipefail
cd "$(dirname "$0")/../deploy/prometheus"
command -v promtool >/dev/null || { echo "promtool not found (apt-get install prometheus)" >&2; exit 1; }
promtool check rules cordon-rules.yml
promtool test rules tests/cordon-rules.test.yml
