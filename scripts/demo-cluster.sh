#!/usr/bin/env bash
# `make demo-cluster`: three supervisors on this machine, one per "machine" (127.0.0.1, .2, .3),
# sharing etc/ceres-supervisor/demo-cluster.toml and coordinating through CeresMeta's etcd. Waits
# until every agent sees the whole cluster healthy, then prints the cluster view from the third.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
CONFIG=etc/ceres-supervisor/demo-cluster.toml
STATE=/tmp/ceres-supervisor-demo-cluster
mkdir -p "$STATE"
$BIN/ceres-supervisor validate -c "$CONFIG" 2>/dev/null
for i in 1 2 3; do
  host=127.0.0.$i
  if $BIN/ceres-supervisor status --url "http://$host:548$i" --local >/dev/null 2>&1 || [[ $? == 1 ]]; then
    echo "agent $host already answers"
    continue
  fi
  echo "Starting the agent for $host (log: $STATE/agent-$i.log)"
  nohup $BIN/ceres-supervisor run -c "$CONFIG" --host "$host" --listen "$host:548$i" \
    >"$STATE/agent-$i.log" 2>&1 </dev/null &
  echo $! >"$STATE/agent-$i.pid"
done
deadline=$((SECONDS + 240))
until $BIN/ceres-supervisor status --url http://127.0.0.3:5483 >/dev/null 2>&1; do
  for i in 1 2 3; do
    if ! kill -0 "$(cat "$STATE/agent-$i.pid" 2>/dev/null || echo 0)" 2>/dev/null; then
      echo "agent 127.0.0.$i exited; last lines of its log:" >&2
      tail -n 20 "$STATE/agent-$i.log" >&2
      exit 1
    fi
  done
  if ((SECONDS > deadline)); then
    echo "The cluster is not healthy after 240 s; as agent 127.0.0.3 sees it:" >&2
    $BIN/ceres-supervisor status --url http://127.0.0.3:5483 >&2 || true
    exit 1
  fi
  sleep 1
done
echo "The whole cluster, as the agent of 127.0.0.3 sees it:"
echo
$BIN/ceres-supervisor status --url http://127.0.0.3:5483 || true
cat <<MSG

Try:   $BIN/ceres-supervisor status --url http://127.0.0.1:5481        (the same view from another agent)
       kill -9 \$(cat $STATE/agent-2.pid)     (an agent dies: its nodes turn unknown, its containers run)
       $BIN/ceres-supervisor describe db2 --url http://127.0.0.1:5481   (a node of agent 2, asked of agent 1)
       $BIN/ceres-supervisor events --url http://127.0.0.1:5481 -f      (every agent's events)
Stop:  make demo-cluster-stop   (stops the agents, then removes the containers; data stays in $STATE/data)
MSG
