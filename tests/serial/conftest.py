"""The serial phase: scenarios that disturb the whole machine (restarting dockerd) run alone, last.

Restarting dockerd: the Docker SDK (7.2.0, docker/transport/unixconn.py) leaks the AF_UNIX socket
of every connect() that fails while the engine's socket is missing; the garbage collector closes
them, some only as pytest exits. Those warnings, and only those, are expected here: for the
tests (the ini line) and when pytest collects what the garbage collector found as it exits (the
session's own filters, set before any conftest's pytest_configure runs)."""

from __future__ import annotations

import warnings

import pytest

from ..integration.conftest import daemons, make_cluster

__all__ = ["daemons", "make_cluster"]

LEAKED_BY_THE_SDK = (
    r"ignore:Exception ignored in. <socket.socket fd=\d+, family=1,:pytest.PytestUnraisableExceptionWarning"
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("filterwarnings", LEAKED_BY_THE_SDK)
    warnings.filterwarnings(  # the session's filters, active again at pytest_unconfigure
        "ignore",
        message=r"Exception ignored in. <socket\.socket fd=\d+, family=1,",
        category=pytest.PytestUnraisableExceptionWarning,
    )
