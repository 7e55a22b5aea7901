"""Where other agents reach this one's API (`advertise_url`): what a remote restart, a rolling
restart across machines and `events`/`logs`/`describe` of another machine's node are sent to."""

from __future__ import annotations

import pytest

from ceres_supervisor.model.addresses import advertise_url


@pytest.mark.parametrize(
    ("listen", "host", "override", "expected"),
    [
        # One identical file on every machine: a wildcard listen is reached at the agent's --host.
        ("0.0.0.0:5480", "10.0.0.7", None, "http://10.0.0.7:5480"),
        ("[::]:5480", "10.0.0.7", None, "http://10.0.0.7:5480"),
        ("0.0.0.0:5480", "fd00::7", None, "http://[fd00::7]:5480"),
        # A listen on one address is reached there, whatever --host says.
        ("127.0.0.2:5481", "127.0.0.9", None, "http://127.0.0.2:5481"),
        # A unix socket is reached from this machine only: remote operations to it are refused.
        ("unix:/run/ceres-supervisor/api.sock", "10.0.0.7", None, ""),
        # `run --advertise` wins (a proxy, a NAT): taken as given, without its trailing slash.
        ("0.0.0.0:5480", "10.0.0.7", "https://ceres-a.example:443/", "https://ceres-a.example:443"),
    ],
)
def test_other_agents_reach_this_one_where_it_listens_or_at_its_host(
    listen: str, host: str, override: str | None, expected: str
) -> None:
    assert advertise_url(listen, host, override) == expected


@pytest.mark.parametrize("override", ["ftp://x", "127.0.0.1:5480", "http://", "http://a b"])
def test_an_advertise_that_is_no_http_url_is_refused_naming_it(override: str) -> None:
    with pytest.raises(ValueError, match=f"--advertise {override!r} is not an http:// or https:// URL"):
        advertise_url("0.0.0.0:5480", "10.0.0.7", override)
