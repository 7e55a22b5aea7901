"""Shared by both stand-ins: the emulated release, logging, durations, the test hooks, HTTP helpers,
the private RPC transport between them and the seam for the supervisor's `serverschema` module."""

from __future__ import annotations

import json
import os
import re
import select
import socket
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUN_DIR = Path("/run/ceres-emulator")
FAULT_FILE = RUN_DIR / "fault"
"""Written by `ceres-emulator-fault`: freeze-lease | freeze-http | ignore-sigterm | exit N | (empty)."""
TICK_FILE = RUN_DIR / "tick"
"""Written by `ceres-emulator-fault tick S`: meta's scheduler interval in seconds (real: 5 s)."""
FLUSH_FILE = RUN_DIR / "flushes"
"""One line per POST /debug/flush_memtable the CeresDB stand-in answered."""
HOOK_POLL_S = 0.5
MAX_BODY = 1 << 20


def release() -> tuple[str, tuple[int, int, int]]:
    """(flavor, version) baked into the image at build time."""
    text = (HERE / "VERSION").read_text().strip()
    major, minor, patch = (int(x) for x in text.split("."))
    return ("horaedb" if major >= 2 else "ceresdb"), (major, minor, patch)


_LOG_LOCK = threading.Lock()


def log(component: str, message: str, **fields: object) -> None:
    extra = " ".join(f"{k}={v}" for k, v in fields.items())
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    with _LOG_LOCK:  # one line at a time, whatever thread logs
        print(f"{stamp} {component} {message} {extra}".rstrip(), file=sys.stdout, flush=True)


_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d)$")
_FACTOR = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """CeresDB's duration syntax: lowercase units only."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise ValueError(f"invalid duration {text!r}")
    return int(match.group(1)) * _FACTOR[match.group(2)]


# --- test hooks (reached only through `docker exec ... ceres-emulator-fault`) ---------------------


def read_fault() -> str:
    try:
        return FAULT_FILE.read_text().strip()
    except OSError:
        return ""


def read_hook(name: str) -> str:
    """The content of /run/ceres-emulator/<name>, or "" (see fault.py for who writes what)."""
    try:
        return (RUN_DIR / name).read_text().strip()
    except OSError:
        return ""


def read_hook_json(name: str) -> dict[str, object]:
    try:
        value = json.loads(read_hook(name) or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def read_seconds(name: str) -> float | None:
    """A hook holding a number of seconds (None when absent, unreadable or not positive)."""
    try:
        value = float(read_hook(name))
    except ValueError:
        return None
    return value if value > 0 else None


def read_tick() -> float | None:
    return read_seconds("tick")


def retry_scale() -> float:
    """`ceres-emulator-fault retry-scale F`: every retry sleep of the stand-ins times F (default 1)."""
    return read_seconds("retry-scale") or 1.0


def sleep_scaled(seconds: float) -> None:
    time.sleep(seconds * retry_scale())


class Hooks:
    """Watches the hook files every 0.5 s: `exit N` exits at once, a change wakes waiters.

    freeze-* and ignore-sigterm faults are transient (cleared when the process starts: a wedged
    process that a restart cures); `exit N`, `tick` and the other hook files persist in the
    container's layer across `docker start`.
    """

    def __init__(self, component: str) -> None:
        self.component = component
        self.changed = threading.Condition()
        self.listeners: list[Callable[[], None]] = []
        self._state: tuple[str, ...] = ()

    def _snapshot(self) -> tuple[str, ...]:
        return (read_fault(), read_hook("tick"), read_hook("open"), read_hook("flush"), read_hook("http500"))

    def start(self) -> None:
        if read_fault().startswith(("freeze", "ignore-sigterm")):
            FAULT_FILE.write_text("")
        self._state = self._snapshot()
        self._check_exit(self._state[0])
        threading.Thread(target=self._watch, name="hooks", daemon=True).start()

    def _check_exit(self, fault: str) -> None:
        if fault.startswith("exit"):
            parts = fault.split()
            code = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 1
            log(self.component, "fault hook: exiting", code=code)
            os._exit(code)

    def _watch(self) -> None:
        while True:
            time.sleep(HOOK_POLL_S)
            state = self._snapshot()
            self._check_exit(state[0])
            if state != self._state:
                self._state = state
                with self.changed:
                    self.changed.notify_all()
                for listener in self.listeners:
                    listener()

    def wait(self, timeout_s: float) -> None:
        with self.changed:
            self.changed.wait(timeout_s)


HOOKS: Hooks | None = None


def wait_hook(timeout_s: float) -> None:
    """Sleep up to `timeout_s`, waking early when a hook file changes."""
    if HOOKS is not None:
        HOOKS.wait(timeout_s)
    else:
        time.sleep(timeout_s)


# --- the private RPC between the stand-ins ----------------------------------------------------------
#
# The real CeresDB calls meta's gRPC service (CeresmetaRpcService, MetaRpcService from 2.0.0) on the
# etcd client port, where the embedded etcd serves it too. The stand-ins cannot share etcd's port, so
# the meta stand-in serves its RPC on an abstract unix socket named after its client port. Abstract
# sockets belong to the network namespace, and every container runs with host networking: the socket
# is reachable exactly while the meta process runs, as the real gRPC listener is. One JSON line in,
# one JSON line out.

RPC_CONNECT_TIMEOUT_S = 2.0


class RpcError(Exception):
    """The call did not get an answer (refused, reset, timed out): a transport error."""


def rpc_socket_name(port: int) -> str:
    return f"\0ceres-emulator/meta-rpc/{port}"


def rpc_call(port: int, request: dict[str, object], timeout_s: float) -> dict[str, object]:
    """One request to the meta member whose etcd client port is `port`."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(min(timeout_s, RPC_CONNECT_TIMEOUT_S))
            conn.connect(rpc_socket_name(port))
            conn.settimeout(timeout_s)
            conn.sendall(json.dumps(request).encode() + b"\n")
            line = conn.makefile("rb").readline(MAX_BODY)
    except TimeoutError:
        raise RpcError('status: Cancelled, message: "Timeout expired"') from None
    except OSError as err:
        raise RpcError(
            f'status: Unavailable, message: "error trying to connect: {err.strerror or err}"'
        ) from None
    if not line:
        raise RpcError('status: Unavailable, message: "connection closed before message completed"')
    try:
        answer = json.loads(line)
    except ValueError:
        raise RpcError(f'status: Internal, message: "undecodable answer {line[:100]!r}"') from None
    if not isinstance(answer, dict):
        raise RpcError('status: Internal, message: "undecodable answer"')
    return answer


def serve_rpc(port: int, handle: Callable[[dict[str, object]], dict[str, object]], component: str) -> bool:
    """Serve `handle` on the abstract socket of `port`, one thread per connection. False if the name
    is taken (another process serves that port)."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(rpc_socket_name(port))
    except OSError as err:
        log(component, "rpc listener failed", port=port, error=err)
        server.close()
        return False
    server.listen(64)

    def serve_one(conn: socket.socket) -> None:
        with conn:
            try:
                line = conn.makefile("rb").readline(MAX_BODY)
                request = json.loads(line) if line else None
            except (OSError, ValueError):
                return
            if not isinstance(request, dict):
                return
            try:
                answer = handle(request)
            except Exception as err:  # an RPC that failed inside: the caller gets an error, not silence
                answer = {"code": 500, "error": f"internal: {err!r}"}
            try:
                conn.sendall(json.dumps(answer).encode() + b"\n")
            except OSError:
                return

    def accept_loop() -> None:
        while True:
            conn, _ = server.accept()
            threading.Thread(target=serve_one, args=(conn,), name="rpc", daemon=True).start()

    threading.Thread(target=accept_loop, name="rpc-accept", daemon=True).start()
    return True


# --- HTTP -------------------------------------------------------------------------------------------


class JsonHandler(BaseHTTPRequestHandler):
    """Reads the body up front (so a held connection can tell a client that hung up), and honours
    `freeze-http` on every method and route: the request is read, then never answered until the
    fault is cleared (or the client gives up)."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    """TCP_NODELAY, as the real servers answer: at once. Without it the header and the body go out
    as two writes and the second waits for the client's delayed ACK, ~40 ms a response on Linux;
    CeresMeta's Go net/http has TCP_NODELAY by default (Go's `net.TCPConn.SetNoDelay`: "The
    default is true"), and CeresDB's hyper sends a small response's head and body in one write."""
    body: bytes = b""

    def log_message(self, format: str, *args: object) -> None:
        return

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        length = int(self.headers.get("Content-Length") or 0)
        self.body = self.rfile.read(min(length, MAX_BODY)) if length > 0 else b""
        if read_fault() == "freeze-http":
            outcome = self.hold(lambda: read_fault() == "freeze-http")
            if outcome != "released":
                self.close_connection = True
                return False
        return True

    def hold(
        self,
        keep_holding: Callable[[], bool],
        cap_s: float | None = None,
        every_second: Callable[[int], None] | None = None,
    ) -> str:
        """Keep the connection open without answering while `keep_holding()`: returns "released",
        "disconnected" (the client hung up) or "cap". One wakeup a second."""
        started = time.monotonic()
        watch, n = True, 0
        while keep_holding():
            if cap_s is not None and time.monotonic() - started >= cap_s:
                return "cap"
            if every_second is not None:
                every_second(n)
                n += 1
            if watch:
                readable, _, _ = select.select([self.connection], [], [], 1.0)
                if readable:
                    try:
                        data = self.connection.recv(1, socket.MSG_PEEK)
                    except OSError:
                        return "disconnected"
                    if not data:
                        return "disconnected"
                    watch = False  # pipelined bytes: cannot tell, stop watching (no busy loop)
            elif HOOKS is not None:
                HOOKS.wait(1.0)
            else:
                time.sleep(1.0)
        return "released"

    def send_json(self, status: int, payload: object) -> None:
        self.send_raw(status, json.dumps(payload).encode(), "application/json")

    def send_raw(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def read_json(self) -> dict[str, object]:
        try:
            value = json.loads(self.body or b"{}")
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}


def local_ipv4_addresses() -> set[str]:
    """Addresses this network namespace owns (host networking: the machine's), from the kernel's
    LOCAL routes; the whole of 127.0.0.0/8 is local on Linux."""
    found = {"0.0.0.0"}
    try:
        text = Path("/proc/net/fib_trie").read_text()
    except OSError:
        return found
    last = ""
    for line in text.splitlines():
        entry = line.strip()
        if entry.startswith("|-- "):
            last = entry[4:].split()[0]
        elif entry.startswith("/32 host LOCAL") and last:
            found.add(last)
    return found


def is_local_host(host: str) -> bool:
    try:
        address = socket.gethostbyname(host)
    except OSError:
        return False
    return address.startswith("127.") or address in local_ipv4_addresses()


# --- the seam for ceres_supervisor/desired/serverschema.py (copied into the image when it exists) ----------


def schema_violations(
    document: dict[str, object], role: str, version: tuple[int, int, int], component: str
) -> list[tuple[list[str], str, str]] | None:
    """[(path segments, kind, message)] from `serverschema.check`, or None when the module is absent
    (or unusable): then the stand-in parses as it always did."""
    try:
        import serverschema  # type: ignore[import-not-found]  # noqa: PLC0415
    except ModuleNotFoundError:
        return None
    except Exception as err:  # a broken copy must not take the stand-in down
        log(component, "serverschema failed to import; built-in parsing only", error=repr(err))
        return None
    getter = serverschema.db_schema if role == "db" else serverschema.meta_schema
    schema = None
    for argument in (version, ".".join(str(x) for x in version)):
        try:
            schema = getter(argument)
            break
        except Exception:  # the other spelling of the version, then give up
            continue
    if schema is None:
        log(component, "serverschema has no schema for this version; built-in parsing only")
        return None
    return [
        (path_segments(getattr(v, "path", "")), str(getattr(v, "kind", "")), str(getattr(v, "message", v)))
        for v in serverschema.check(document, schema)
    ]


def path_segments(path: object) -> list[str]:
    """A violation's path as segments: a sequence as is, or a dotted string whose segments may be
    JSON-quoted (`analytic.wal."type"`); `[n]` indices stay with their key."""
    if isinstance(path, (list, tuple)):
        return [str(p) for p in path]
    text, segments, current, i = str(path), [], "", 0
    while i < len(text):
        char = text[i]
        if char == '"':
            end = i + 1
            while end < len(text) and text[end] != '"':
                end += 2 if text[end] == "\\" else 1
            try:
                current += json.loads(text[i : end + 1])
            except ValueError:
                current += text[i : end + 1]
            i = end + 1
            continue
        if char == ".":
            segments.append(current)
            current = ""
        else:
            current += char
        i += 1
    if current or segments:
        segments.append(current)
    return [s for s in segments if s != "$"]
