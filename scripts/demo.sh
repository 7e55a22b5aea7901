#!/usr/bin/env bash
# `make demo`: start a supervisor on etc/ceres-supervisor/demo.toml (the example cluster on the
# stand-in images), wait until the cluster is healthy, show its status, say how to stop it.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
CONFIG=etc/ceres-supervisor/demo.toml
STATE=/tmp/ceres-supervisor-demo
mkdir -p "$STATE"

if $BIN/ceres-supervisor status -c "$CONFIG" >/dev/null 2>&1 || [[ $? == 1 ]]; then
  echo "A supervisor already answers for the demo; its status:"
else
  $BIN/ceres-supervisor validate -c "$CONFIG"
  echo "Starting the supervisor (log: $STATE/supervisor.log) ..."
  nohup $BIN/ceres-supervisor run -c "$CONFIG" >"$STATE/supervisor.log" 2>&1 </dev/null &
  echo $! >"$STATE/supervisor.pid"
  deadline=$((SECONDS + 180))
  until $BIN/ceres-supervisor status -c "$CONFIG" >/dev/null 2>&1; do
    if ! kill -0 "$(cat "$STATE/supervisor.pid")" 2>/dev/null; then
      echo "The supervisor exited; last lines of its log:" >&2
      tail -n 20 "$STATE/supervisor.log" >&2
      exit 1
    fi
    if ((SECONDS > deadline)); then
      echo "The cluster is not healthy after 180 s; its status:" >&2
      $BIN/ceres-supervisor status -c "$CONFIG" >&2 || true
      exit 1
    fi
    sleep 1
  done
  echo "The cluster is healthy:"
fi
echo
$BIN/ceres-supervisor status -c "$CONFIG" || true
cat <<MSG

Try:   $BIN/ceres-supervisor status -c $CONFIG -o wide  (the table; --json for the API document)
       $BIN/ceres-supervisor events -c $CONFIG -f        (what happened, as it happens)
       kill -9 \$(docker inspect -f '{{.State.Pid}}' ceres-defaultCluster-db0)   (a crash: watch it come back)
       $BIN/ceres-supervisor describe db0 -c $CONFIG     (why: its history, last exits, container, logs)
Stop:  make demo-stop   (stops the supervisor, then removes the containers; data stays in $STATE/data)
MSG
