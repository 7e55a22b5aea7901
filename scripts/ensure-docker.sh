#!/usr/bin/env bash
# Make sure a Docker Engine answers on this machine.
#
# - If `docker info` already works, do nothing.
# - On Debian as root: install docker.io (and its engine, dockerd) if missing, start dockerd in the
#   background (no systemd here), and wait until it answers.
# - Elsewhere: stop with a message that says what to install.
set -euo pipefail

DEADLINE_S=${DOCKER_WAIT_S:-60}
LOG=${DOCKERD_LOG:-/var/log/dockerd.log}

engine_answers() { docker info >/dev/null 2>&1; }

if command -v docker >/dev/null 2>&1 && engine_answers; then
  exit 0
fi

is_debian_root() { [[ $(id -u) == 0 && -f /etc/debian_version ]] && command -v apt-get >/dev/null; }

if ! command -v dockerd >/dev/null 2>&1; then
  if is_debian_root; then
    echo "ensure-docker: installing docker.io from Debian's packages" >&2
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      docker.io iptables ca-certificates >/dev/null
  else
    cat >&2 <<'MSG'
ensure-docker: no Docker Engine answers and this script can only install one on Debian as root.
Install Docker Engine (Debian/Ubuntu: `apt-get install docker.io`; others: your distribution's
docker package or Docker's own packages), start it, make `docker info` work for this user, then
run the command again.
MSG
    exit 1
  fi
fi

if ! pgrep -x dockerd >/dev/null 2>&1; then
  if [[ $(id -u) != 0 ]]; then
    echo "ensure-docker: dockerd is installed but not running; start it (sudo systemctl start docker) and retry" >&2
    exit 1
  fi
  echo "ensure-docker: starting dockerd in the background (log: $LOG)" >&2
  nohup dockerd >"$LOG" 2>&1 </dev/null &
fi

for ((i = 0; i < DEADLINE_S * 5; i++)); do
  if engine_answers; then
    echo "ensure-docker: Docker Engine answers ($(docker version --format '{{.Server.Version}}' 2>/dev/null))" >&2
    exit 0
  fi
  sleep 0.2
done
echo "ensure-docker: dockerd did not answer within ${DEADLINE_S}s; last lines of $LOG:" >&2
tail -n 20 "$LOG" >&2 || true
exit 1
