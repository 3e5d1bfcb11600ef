#!/usr/bin/env bash
# A local multi-process Ray cluster (a head and one worker node process) with metrics on, and a
# Prometheus scraping it. Submit jobs with: python -m jobs.submit --address http://127.0.0.1:8265 ...
# Stop everything with cluster/stop_local.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
RAY=${RAY:-.venv/bin/ray}
$RAY start --head --port=6379 --node-ip-address=127.0.0.1 --dashboard-host=127.0.0.1 \
    --metrics-export-port=8080 --num-cpus="${HEAD_CPUS:-1}" --disable-usage-stats
$RAY start --address=127.0.0.1:6379 --node-ip-address=127.0.0.1 --metrics-export-port=8081 \
    --num-cpus="${WORKER_CPUS:-2}"
if command -v prometheus >/dev/null; then
    mkdir -p runs/prometheus
    nohup prometheus --config.file=cluster/prometheus.yml --storage.tsdb.path=runs/prometheus \
        --web.listen-address=127.0.0.1:9090 > runs/prometheus/log 2>&1 &
    echo $! > runs/prometheus/pid
    echo "Prometheus on http://127.0.0.1:9090"
fi
echo "Ray dashboard on http://127.0.0.1:8265"
