"""Which hosts are this supervisor's: decided once, IP literals without DNS, names resolved once."""

from __future__ import annotations

import socket

import pytest

from ceres_supervisor.desired import locality
from ceres_supervisor.desired.locality import Locality, LocalityError


def test_with_host_exactly_that_address_is_local_and_nothing_is_resolved() -> None:
    place = locality.decide(["127.0.0.1", "127.0.0.2", "db.invalid"], Locality("127.0.0.2"))
    assert [place.is_local(h) for h in ("127.0.0.1", "127.0.0.2", "db.invalid")] == [False, True, False]
    assert place.hosts() == {"127.0.0.2"}


def test_ip_literals_are_decided_without_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_dns(*_args: object, **_kwargs: object) -> object:
        raise AssertionError("an IP literal was looked up in DNS")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    place = locality.decide(["127.0.0.1", "127.0.0.9", "192.0.2.7"], Locality())
    assert place.is_local("127.0.0.1") and place.is_local("127.0.0.9")
    assert not place.is_local("192.0.2.7")  # TEST-NET-1: never an address of this machine
    assert place.hosts() == {"127.0.0.1", "127.0.0.9"}


def test_a_name_is_resolved_once_and_a_later_resolver_failure_changes_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    real = socket.getaddrinfo

    def counting(host: str, *args: object, **kwargs: object) -> object:
        calls.append(host)
        if host == "node-a.test":
            return real("127.0.0.3", *args, **kwargs)  # type: ignore[arg-type]
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", counting)
    first = locality.decide(["node-a.test"], Locality())
    assert first.is_local("node-a.test") and calls == ["node-a.test"]
    again = locality.decide(["node-a.test", "127.0.0.1"], first)  # a reload: the name is not looked up again
    assert again.is_local("node-a.test") and calls == ["node-a.test"]
    with pytest.raises(LocalityError, match=r"cannot resolve node host 'node-b\.test'"):
        locality.decide(["node-a.test", "node-b.test"], again)


def test_a_host_never_decided_is_not_local() -> None:
    assert not Locality().is_local("127.0.0.1")
