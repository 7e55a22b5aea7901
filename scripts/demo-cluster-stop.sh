#!/usr/bin/env bash
# `make demo-cluster-stop`: stop the three agents, then remove each host's containers (data kept).
set -euo pipefail
cd "$(dirname "$0")/.."
STATE=/tmp/ceres-supervisor-demo-cluster
for i in 1 2 3; do
  if [[ -f $STATE/agent-$i.pid ]] && kill -0 "$(cat "$STATE/agent-$i.pid")" 2>/dev/null; then
    pid=$(cat "$STATE/agent-$i.pid")
    kill -TERM "$pid"
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    echo "agent 127.0.0.$i stopped"
  fi
  rm -f "$STATE/agent-$i.pid"
done
for i in 1 2 3; do
  .venv/bin/ceres-supervisor down -c etc/ceres-supervisor/demo-cluster.toml --host "127.0.0.$i"
done
