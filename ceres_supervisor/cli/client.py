"""Talking to a running daemon from the command line: where its API is, one request, and what an
answer that is not a success means (its exit code and one plain line).

The API address comes from `--url` / `--socket`, else from the desired-state file's
`supervisor.listen` (`-c`, default /etc/ceres-supervisor/cluster.toml). The file is read leniently
(only its `[supervisor]` table, so commands work where its secrets are not readable), but it must
exist: a file that is missing is said so, never replaced by a default address. The token comes
from `--token-file`, else the file's `supervisor.token_file`.
"""

from __future__ import annotations

import errno
import json
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp

from ceres_supervisor.cli import exits
from ceres_supervisor.cli.exits import Failure
from ceres_supervisor.model.addresses import Listen, parse_listen

DEFAULT_CONFIG: Final = "/etc/ceres-supervisor/cluster.toml"
DEFAULT_TIMEOUT_S: Final = 10.0


@dataclass(frozen=True)
class Endpoint:
    base: str
    socket: str | None
    token: str | None
    where: str
    """How the user would name it: the URL, `unix:/path`, or the listen address and its file."""


def _read_token(path: str, named_by: str) -> str | None:
    try:
        return Path(path).read_text().strip() or None
    except OSError as err:
        raise Failure(
            exits.NO_FILE, f"cannot read the token file {path} ({named_by}): {err.strerror or err}"
        ) from None


def supervisor_table(path: str) -> dict[str, Any]:
    """The file's `[supervisor]` table, read leniently; a missing file or one that is not TOML is
    an error that says so."""
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise Failure(
            exits.NO_FILE,
            f"cannot read {path}: {err.strerror or err} (give the desired-state file with -c FILE, "
            "or the daemon's API with --url URL or --socket PATH)",
        ) from None
    except UnicodeDecodeError:
        raise Failure(exits.INVALID, f"{path}: the file is not UTF-8 text") from None
    try:
        table = tomllib.loads(text).get("supervisor", {})
    except (tomllib.TOMLDecodeError, RecursionError) as err:
        raise Failure(exits.INVALID, f"{path}: not valid TOML ({err})") from None
    return table if isinstance(table, dict) else {}


def normalize_url(url: str) -> str:
    """`--url`: `http://host:port` (a bare `host:port` is taken as http); anything else is a usage
    error that says what is expected."""
    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    try:
        parts = urlsplit(text)
        _port = parts.port  # raises ValueError on a port that is not a number
    except ValueError:
        parts = None
    if (
        parts is None
        or parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.path not in ("", "/")
    ):
        raise Failure(exits.USAGE, f"--url {url!r} is not the API's base URL, like http://127.0.0.1:5480")
    return text.rstrip("/")


def endpoint(
    url: str | None, socket_path: str | None, config: str | None, token_file: str | None = None
) -> Endpoint:
    """Where the API is. `config` is None when `-c` was not given (the default file is then read
    if it is needed, or if it exists, for the token)."""
    path = config or DEFAULT_CONFIG
    needed = url is None and socket_path is None
    table: dict[str, Any] = {}
    if needed or config is not None or Path(path).exists():
        table = supervisor_table(path)
    named = table.get("token_file")
    if token_file:
        token = _read_token(token_file, "--token-file")
    elif isinstance(named, str) and named:
        token = _read_token(named, f"supervisor.token_file of {path}")
    else:
        token = None
    if url:
        base = normalize_url(url)
        return Endpoint(base, None, token, base)
    if socket_path:
        return Endpoint("http://localhost", socket_path, token, f"unix:{socket_path}")
    listen_text = str(table.get("listen", "127.0.0.1:5480"))
    try:
        listen = parse_listen(listen_text)
    except ValueError as err:
        raise Failure(exits.INVALID, f"{path}: supervisor.listen: {err}") from None
    return from_listen(listen, token, f"{listen_text} (supervisor.listen of {path})")


def from_listen(listen: Listen, token: str | None, where: str) -> Endpoint:
    if listen.unix_path is not None:
        return Endpoint("http://localhost", listen.unix_path, token, where)
    host = "127.0.0.1" if listen.host in ("0.0.0.0", "") else "[::1]" if listen.host == "::" else listen.host
    host = f"[{host}]" if host and ":" in host and not host.startswith("[") else host
    return Endpoint(f"http://{host}:{listen.port}", None, token, where)


def _reason(err: BaseException, ep: Endpoint, timeout_s: float) -> str:
    """Why a connection failed, in words (not the library's text)."""
    if isinstance(err, TimeoutError | aiohttp.ServerTimeoutError):
        return f"no answer within {timeout_s:g}s"
    os_error = getattr(err, "os_error", None) or (err if isinstance(err, OSError) else None)
    number = getattr(os_error, "errno", None)
    if ep.socket and number in (errno.ENOENT, errno.ECONNREFUSED):
        return f"no socket at {ep.socket}" if number == errno.ENOENT else "nobody listens on the socket"
    if isinstance(number, int) and number > 0:
        return os.strerror(number).lower()
    if isinstance(err, aiohttp.ClientConnectorDNSError):
        return "the host name does not resolve"
    if isinstance(err, aiohttp.ServerDisconnectedError):
        return "the connection was closed before an answer"
    return "the connection failed"


async def call(
    ep: Endpoint, method: str, path: str, timeout_s: float = DEFAULT_TIMEOUT_S, body: object = None
) -> tuple[int, Any]:
    """One request; (HTTP status, the JSON body, or its text). Raises Failure(UNREACHABLE)."""
    connector = aiohttp.UnixConnector(path=ep.socket) if ep.socket else aiohttp.TCPConnector()
    headers = {"Authorization": f"Bearer {ep.token}"} if ep.token else {}
    try:
        async with (
            aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s)
            ) as session,
            session.request(method, ep.base + path, headers=headers, json=body) as response,
        ):
            raw = await response.read()
            try:
                return response.status, json.loads(raw) if raw else None
            except ValueError:
                return response.status, raw.decode(errors="replace")
    except (aiohttp.ClientError, TimeoutError, OSError) as err:
        raise Failure(
            exits.UNREACHABLE, f"no ceres-supervisor answers at {ep.where}: {_reason(err, ep, timeout_s)}"
        ) from None


def refusal(status: int, body: object, ep: Endpoint) -> Failure:
    """What an answer that is not a success means: its exit code and one plain line."""
    error = body.get("error") if isinstance(body, dict) else body
    text = exits.one_line(error or "") or f"HTTP {status}"
    if status in (401, 403):
        return Failure(
            exits.REFUSED,
            f"the daemon at {ep.where} refused the token (HTTP {status}): give it with --token-file FILE "
            "or the file's supervisor.token_file",
        )
    if status == 404 and isinstance(body, dict) and body.get("known"):
        known = ", ".join(exits.one_line(n) for n in body["known"])
        return Failure(exits.UNKNOWN_NODE, f"{text}; the nodes of the file: {known}")
    if status == 409:
        return Failure(exits.CONFLICT, text)
    if status == 422:
        return Failure(exits.INVALID, text)
    if status == 400:
        return Failure(exits.USAGE, f"the daemon did not take the request: {text}")
    if status in (502, 503, 504):
        return Failure(exits.UNREACHABLE, text)
    return Failure(exits.INTERNAL, f"the daemon at {ep.where} failed (HTTP {status}): {text}")


def expect(status: int, body: object, ep: Endpoint, ok: tuple[int, ...] = (200,)) -> dict[str, Any]:
    """The body of a successful answer (a JSON object), else the Failure it means."""
    if status not in ok:
        raise refusal(status, body, ep)
    if not isinstance(body, dict):
        raise Failure(
            exits.INTERNAL, f"the daemon at {ep.where} answered HTTP {status} without a JSON object"
        )
    return body
