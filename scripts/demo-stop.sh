#!/usr/bin/env bash
# `make demo-stop`: stop the demo's supervisor (it leaves the containers running, as in
# production), then remove the containers with `ceres-supervisor down` (data is kept).
set -euo pipefail
cd "$(dirname "$0")/.."
STATE=/tmp/ceres-supervisor-demo
if [[ -f $STATE/supervisor.pid ]] && kill -0 "$(cat "$STATE/supervisor.pid")" 2>/dev/null; then
  pid=$(cat "$STATE/supervisor.pid")
  kill -TERM "$pid"
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  echo "supervisor stopped"
fi
rm -f "$STATE/supervisor.pid"
.venv/bin/ceres-supervisor down -c etc/ceres-supervisor/demo.toml
