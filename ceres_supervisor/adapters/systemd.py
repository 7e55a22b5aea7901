"""sd_notify over $NOTIFY_SOCKET with the standard library, and the watchdog interval.

Outside systemd (no NOTIFY_SOCKET) every call is a no-op. Sending never raises: a lost
notification must not take the daemon down.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Final

import structlog

log = structlog.get_logger(__name__)

STATUS_MAX: Final = 400


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, as systemd wants it with RELOADING=1."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        # An abstract socket is written with a leading "@".
        self.address: str | None = ("\0" + address[1:]) if address.startswith("@") else (address or None)
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        watchdog = usec.isdigit() and (not pid or pid == str(os.getpid()))
        self.watchdog_interval_s: float | None = int(usec) / 1e6 / 2 if watchdog else None
        """Send WATCHDOG=1 at least this often (half of WatchdogSec)."""
        self._last_status = ""
        self._last_watchdog = 0.0

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> None:
        if self.address is None:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                # Never wait for the receiver: its queue holds ten datagrams (net.unix.max_dgram_qlen),
                # and a blocking send past them would stop the event loop until it reads.
                sock.setblocking(False)
                sock.sendto("\n".join(fields).encode(), self.address)
        except OSError as err:
            log.warning("sd_notify_failed", error=str(err))

    def status(self, text: str) -> None:
        """STATUS= only when it changed."""
        line = text.replace("\n", " ")[:STATUS_MAX]
        if line != self._last_status:
            self._last_status = line
            self.send(f"STATUS={line}")

    def ready(self, status: str | None = None) -> None:
        if status is not None:
            self._last_status = status
        self.send("READY=1", *([f"STATUS={status}"] if status is not None else []))

    def reloading(self) -> None:
        self.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def watchdog(self) -> None:
        """WATCHDOG=1 from the loop, throttled to the interval systemd asked for."""
        if self.watchdog_interval_s is None:
            return
        now = time.monotonic()
        if now - self._last_watchdog >= self.watchdog_interval_s / 2:
            self._last_watchdog = now
            self.send("WATCHDOG=1")
