#!/usr/bin/env bash
# Stops what cluster/start_local.sh started.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -f runs/prometheus/pid ]; then kill "$(cat runs/prometheus/pid)" 2>/dev/null; rm -f runs/prometheus/pid; fi
${RAY:-.venv/bin/ray} stop
