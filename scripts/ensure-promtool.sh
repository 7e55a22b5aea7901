#!/usr/bin/env bash
# Make sure `promtool` runs (make test checks the alerting rules and the /metrics text with it).
#
# - If `promtool` (or $PROMTOOL) already runs, do nothing.
# - On Debian as root: install Debian's `prometheus` package, which ships /usr/bin/promtool. Its
#   server is not started here (RUNLEVEL=1 keeps invoke-rc.d from starting services; under
#   systemd the unit is stopped and disabled again if the package enabled it).
# - Elsewhere: stop with a message that says what to install.
set -euo pipefail

PROMTOOL=${PROMTOOL:-promtool}

promtool_runs() { command -v "$PROMTOOL" >/dev/null 2>&1 && "$PROMTOOL" --version >/dev/null 2>&1; }

if promtool_runs; then
  exit 0
fi

is_debian_root() { [[ $(id -u) == 0 && -f /etc/debian_version ]] && command -v apt-get >/dev/null; }

if ! is_debian_root; then
  cat >&2 <<'MSG'
ensure-promtool: no `promtool` on PATH and this script can only install it on Debian as root.
Install Prometheus's promtool (Debian/Ubuntu: `apt-get install prometheus`; others: the
prometheus release tarball from prometheus.io, which holds `promtool`), make `promtool --version`
work for this user (or set PROMTOOL=/path/to/promtool), then run the command again.
MSG
  exit 1
fi

echo "ensure-promtool: installing promtool from Debian's prometheus package" >&2
apt-get update -q >/dev/null
RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null
if [[ -d /run/systemd/system ]] && systemctl is-active --quiet prometheus 2>/dev/null; then
  systemctl disable --now prometheus >/dev/null 2>&1 || true  # only promtool is wanted here
fi

if ! promtool_runs; then
  echo "ensure-promtool: prometheus was installed but \`$PROMTOOL --version\` fails" >&2
  exit 1
fi
echo "ensure-promtool: $("$PROMTOOL" --version 2>&1 | head -n 1)" >&2
