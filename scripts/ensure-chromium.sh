#!/usr/bin/env bash
# Make sure a headless-capable Chromium is installed (tests/integration/test_page.py drives it).
#
# - If `chromium` (or $CHROMIUM) already runs, do nothing.
# - On Debian as root: install Debian's `chromium` package (binary /usr/bin/chromium).
# - Elsewhere: stop with a message that says what to install.
set -euo pipefail

CHROMIUM=${CHROMIUM:-chromium}

chromium_runs() { command -v "$CHROMIUM" >/dev/null 2>&1 && "$CHROMIUM" --version >/dev/null 2>&1; }

if chromium_runs; then
  exit 0
fi

is_debian_root() { [[ $(id -u) == 0 && -f /etc/debian_version ]] && command -v apt-get >/dev/null; }

if ! is_debian_root; then
  cat >&2 <<'MSG'
ensure-chromium: no `chromium` on PATH and this script can only install it on Debian as root.
Install Chromium (Debian: `apt-get install chromium`; Ubuntu: the `chromium` snap or package;
others: your distribution's chromium package), make `chromium --version` work for this user
(or set CHROMIUM=/path/to/chrome), then run the command again.
MSG
  exit 1
fi

echo "ensure-chromium: installing chromium from Debian's packages" >&2
apt-get update -q >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null

if ! chromium_runs; then
  echo "ensure-chromium: chromium was installed but \`$CHROMIUM --version\` fails" >&2
  exit 1
fi
echo "ensure-chromium: $("$CHROMIUM" --version 2>/dev/null)" >&2
