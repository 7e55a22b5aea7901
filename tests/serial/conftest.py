"""The serial phase: scenarios that disturb the whole machine (restarting dockerd) run alone, last."""

from ..integration.conftest import daemons, make_cluster

__all__ = ["daemons", "make_cluster"]
