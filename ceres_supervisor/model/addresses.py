"""Addresses: node hosts, the machine a host is on, the API's listen address and the URL other
agents reach it at. Pure."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Final

_HOSTNAME: Final = re.compile(
    r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


def check_host(value: str) -> str:
    """A node host is an IPv4 address or a DNS name, never with a port."""
    if not value:
        raise ValueError("must not be empty")
    if ":" in value:
        try:
            ipaddress.IPv6Address(value.strip("[]"))
        except ValueError:
            raise ValueError(
                f"{value!r} contains a port; write the address alone (ports have their own keys)"
            ) from None
        raise ValueError("IPv6 addresses are not supported yet; use an IPv4 address or a name")
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        if not _HOSTNAME.fullmatch(value):
            raise ValueError(f"{value!r} is not a host name or IPv4 address") from None
    return value


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.IPv4Address(host).is_loopback
    except ValueError:
        return False


def machine_of(host: str) -> str:
    """Hosts on one machine: every loopback address is the same machine (servers bind 0.0.0.0)."""
    return "loopback" if is_loopback(host) else host


@dataclass(frozen=True)
class Listen:
    unix_path: str | None = None
    host: str | None = None
    port: int | None = None

    @property
    def is_loopback(self) -> bool:
        return self.unix_path is not None or (self.host is not None and is_loopback(self.host))


def parse_listen(value: str) -> Listen:
    if value.startswith("unix:"):
        path = value.removeprefix("unix:")
        if not path.startswith("/"):
            raise ValueError("a unix socket is written unix:/absolute/path")
        return Listen(unix_path=path)
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{value!r} is neither host:port nor unix:/path")
    return Listen(host=host, port=int(port_text))


def advertise_url(listen: str, host: str, override: str | None = None) -> str:
    """The URL other agents reach this one's API at: `override` (`run --advertise`), else `listen`,
    its wildcard address replaced by `host` (the agent's `--host`, or its first address). A unix
    socket is reached from this machine only: "" (remote operations to this agent are refused)."""
    if override:
        if not re.fullmatch(r"https?://[^/\s]+(/[^\s]*)?", override):
            raise ValueError(f"--advertise {override!r} is not an http:// or https:// URL")
        return override.rstrip("/")
    address = parse_listen(listen)
    if address.unix_path is not None:
        return ""
    where = address.host or host
    if where in ("0.0.0.0", "::", "[::]"):
        where = host
    if ":" in where and not where.startswith("["):
        where = f"[{where}]"
    return f"http://{where}:{address.port}"
