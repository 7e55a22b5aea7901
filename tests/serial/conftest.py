"""The serial phase: scenarios that disturb the whole machine (restarting dockerd) run alone, last.

Restarting dockerd: the Docker SDK (7.2.0, docker/transport/unixconn.py) leaks the AF_UNIX socket
of every connect() that fails while the engine's socket is missing; the garbage collector closes
them, some only as pytest exits. Those warnings, and only those, are expected here."""

from __future__ import annotations

import pytest

from ..integration.conftest import daemons, make_cluster

__all__ = ["daemons", "make_cluster"]

LEAKED_BY_THE_SDK = (
    r"ignore:Exception ignored in. <socket.socket fd=\d+, family=1,:pytest.PytestUnraisableExceptionWarning"
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("filterwarnings", LEAKED_BY_THE_SDK)
