"""Which node hosts are this supervisor's own (README, Several machines), decided once.

With `run --host ADDR` exactly the nodes whose `host` is ADDR are its own: no lookup at all.
Without it, a host is this machine's when it is a loopback address or an address one of its
interfaces holds. IP literals are decided without DNS (binding a socket to the address succeeds
only for a local one); a name is resolved once, the first time the file names it, and the answer
is kept: a resolver hiccup during a reload can never turn local nodes into remote ones. A name
that cannot be resolved is an error naming it (the daemon refuses to start, a reload is refused).
Blocking (DNS, sockets): call it from a thread.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ceres_supervisor.model.errors import CeresError


class LocalityError(CeresError):
    """A node host that cannot be resolved: nobody can tell whether it is this machine."""


@dataclass(frozen=True)
class Locality:
    host: str | None = None
    """`--host ADDR`: this supervisor runs exactly the nodes whose host is ADDR."""
    decided: Mapping[str, bool] = field(default_factory=dict)
    """host -> whether it is this machine's (without --host)."""

    def is_local(self, host: str) -> bool:
        if self.host is not None:
            return host == self.host
        return self.decided.get(host, False)

    def owns(self, host: str) -> bool:
        """Whether a container labelled with `host` is this supervisor's, also for a host the file
        no longer names (a node removed while the daemon was down): an address of this machine
        is, decided without DNS; an unknown name is not (nothing is removed on a guess)."""
        if self.host is not None:
            return host == self.host
        if host in self.decided:
            return self.decided[host]
        try:
            return _address_is_local(str(ipaddress.IPv4Address(host)))
        except ValueError:
            return False

    def hosts(self) -> frozenset[str]:
        """The node hosts this supervisor owns (the `io.ceres-supervisor.host` labels it touches)."""
        if self.host is not None:
            return frozenset({self.host})
        return frozenset(h for h, local in self.decided.items() if local)


@functools.lru_cache(maxsize=256)
def _address_is_local(address: str) -> bool:
    if ipaddress.IPv4Address(address).is_loopback:
        return True
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((address, 0))
        except OSError:
            return False
    return True


def _decide(host: str) -> bool:
    try:
        return _address_is_local(str(ipaddress.IPv4Address(host)))
    except ValueError:
        pass  # a name
    if host == "localhost":
        return True
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_DGRAM)
    except OSError as err:
        raise LocalityError(
            f"cannot resolve node host {host!r} ({err.strerror or err}); the supervisor must know "
            "whether it is this machine (use an IP address, fix the resolver, or run with --host)"
        ) from None
    return any(_address_is_local(str(info[4][0])) for info in infos)


def decide(hosts: Iterable[str], previous: Locality) -> Locality:
    """Decide the hosts not decided yet; keep every earlier answer. Raises LocalityError."""
    if previous.host is not None:
        return previous
    decided = dict(previous.decided)
    for host in sorted(set(hosts) - set(decided)):
        decided[host] = _decide(host)
    return Locality(None, decided)
