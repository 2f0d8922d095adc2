#!/usr/bin/env bash
# Agent scale on loopback: one agent with 1,000 upstreams and 100 services over a discovery
# directory of 10,000 services. Prints the start time, idle RSS and CPU, and what Synapse
# rewriting all 10,000 discovery files at once costs the agent. Bounded: about a minute.
# SCALE_DISCOVERY, SCALE_UPSTREAMS, SCALE_SERVICES and SCALE_IDLE_SECONDS change the sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== building (release)"
cargo build -q --release --bin cordon
timeout 300 python3 scripts/agent-scale.py target/release/cordon
