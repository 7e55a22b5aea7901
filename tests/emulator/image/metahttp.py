"""The meta stand-in's HTTP API (META v1.2.2:server/service/http/api.go, forward.go; v1.2.7 the same
files): health answered locally, everything else answered by the leader's cluster manager, a
follower forwarding to `<leader's advertise host>:<its own HTTP port>` with no loop guard."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

import common

FLAVOR, VERSION = common.release()
HEALTH_PATH = "/api/v1/healthCheck" if VERSION < (1, 2, 7) else "/api/v1/health"
DIAGNOSE = re.compile(r"^/debug/diagnose/([^/]+)/shards$")
"""GetWithoutPrefix / DebugGet (META v1.2.7:server/service/http/api.go:73; HDB v2.0.0 horaemeta
server/service/http/api.go:91)."""
MSG_PREFIX = "err: " if VERSION < (1, 2, 7) else ""
"""Error messages: `fmt.Sprintf("err: %s", ...)` up to 1.2.6, the bare error from 1.2.7's `wrap`
(META v1.2.2:server/service/http/api.go:280-314, v1.2.5:api.go:341-356, v1.2.7:api.go:176-190)."""
ETCD_TIMEOUT = "context deadline exceeded"
SELF_FORWARD_CAP_S = 120.0
"""A follower forwarding to itself recurses until the caller gives up; the stand-in holds the
request instead, at most this long."""


def _log(message: str, **fields: object) -> None:
    common.log("meta", message, **fields)


def format_http_addr(endpoint: str, http_port: int) -> str:
    """formatHTTPAddr: the leader's endpoint host with *this* node's HTTP port (META v1.2.2:
    server/service/http/forward.go:91-104)."""
    host_port = urllib.parse.urlparse(endpoint).netloc.split(":")
    if len(host_port) != 2:
        raise ValueError(f"parse leader addr, grpcAdd:{endpoint}")
    return f"{host_port[0]}:{http_port}"


def error_envelope(code: int, desc: str, msg: str, cause: str = "<nil>") -> dict[str, object]:
    return {"status": "error", "error": f"(#{code}){desc}, cause:{cause}", "msg": msg}


def make_handler(meta: Any) -> type[common.JsonHandler]:
    class Handler(common.JsonHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == HEALTH_PATH:
                self.received("healthCheck" if VERSION < (1, 2, 7) else "health")
                self.send_json(200, {"status": "success"})  # never forwarded
            elif path == "/api/v1/clusters":
                self.received("listClusters")
                if not self.failing("clusters", "get cluster", f"{MSG_PREFIX}list clusters: {ETCD_TIMEOUT}"):
                    self.forwarded(self.list_clusters)
            elif VERSION >= (1, 2, 7) and (cluster := DIAGNOSE.match(path)) is not None:
                self.received("diagnoseShards")
                self.forwarded(lambda: self.diagnose_shards(cluster.group(1)))
            else:
                self.not_found()

        def do_POST(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/api/v1/getNodeShards":
                self.received("getNodeShards")
                if not self.failing(
                    "getNodeShards", "get node shards", f"{MSG_PREFIX}get cluster view: {ETCD_TIMEOUT}"
                ):
                    self.forwarded(self.get_node_shards)
            else:
                self.not_found()

        def failing(self, route: str, desc: str, msg: str) -> bool:
            """`ceresdb-emulator-fault http500 ROUTE SECONDS`: this member answers ROUTE with the error
            its handler returns when the cluster manager fails (ErrGetNodeShards / ErrGetCluster are
            Internal: HTTP 500; META v1.2.2:server/service/http/error.go:11,14; api.go:280-314,415-433)."""
            until = common.read_hook_json("http500").get(route)
            if not isinstance(until, int | float) or time.time() >= until:
                return False
            _log(f"{route} failed", error=msg)
            self.send_json(500, error_envelope(500, desc, msg))
            return True

        def received(self, handler_name: str, **extra: object) -> None:
            """printRequestInsmt: every API request is logged at INFO (META v1.2.2:
            server/service/http/api.go:83-94)."""
            _log(
                "receive http request",
                handlerName=handler_name,
                client_host=f"{self.client_address[0]}:{self.client_address[1]}",
                method=self.command,
                body=self.body.decode(errors="replace"),
                **extra,
            )

        def not_found(self) -> None:
            self.send_raw(404, b"404 page not found\n", "text/plain; charset=utf-8")

        # -- answers of the leader's cluster manager --
        def list_clusters(self) -> None:
            with meta.lock:
                clusters = [meta.cluster_json()] if meta.cluster is not None else []
            self.send_json(200, {"status": "success", "data": clusters})

        def diagnose_shards(self, name: str) -> None:
            with meta.lock:
                answer = (
                    meta.diagnose_shards() if meta.cluster is not None and name == meta.cluster_name else None
                )
            if answer is None:
                self.send_json(
                    500,
                    error_envelope(
                        500,
                        "get cluster",
                        f"clusterName: {name}, err: (#404)cluster not found, cause:cluster name:{name}",
                    ),
                )
                return
            self.send_json(200, {"status": "success", "data": answer})

        def get_node_shards(self) -> None:
            try:
                body = json.loads(self.body or b"")
                name = (
                    next((v for k, v in body.items() if k.lower() == "clustername"), "")
                    if isinstance(body, dict)
                    else ""
                )
            except ValueError as err:
                self.send_json(400, error_envelope(400, "parse request params", f"{MSG_PREFIX}{err}"))
                return
            with meta.lock:
                answer = (
                    meta.node_shards() if meta.cluster is not None and name == meta.cluster_name else None
                )
            if answer is None:
                self.send_json(
                    500,
                    error_envelope(
                        500,
                        "get node shards",
                        f"{MSG_PREFIX}get cluster: (#404)cluster not found, cause:cluster name:{name}",
                    ),
                )
                return
            self.send_json(200, {"status": "success", "data": answer})

        # -- forwarding (META v1.2.2:server/service/http/forward.go:48-104) --
        def forwarded(self, answer: Callable[[], None]) -> None:
            with meta.lock:
                leader = meta.cached_leader
            if leader is None:
                _log("forward to leader failed", error="get forwarded addr: no leader found")
                self.send_json(
                    500,
                    error_envelope(
                        500, "forward to leader", f"{MSG_PREFIX}get forwarded addr: no leader found"
                    ),
                )
                return
            if meta.is_local(leader):
                answer()
                return
            try:
                addr = format_http_addr(leader.endpoint, meta.http_port)
            except ValueError as err:
                self.send_json(
                    500, error_envelope(500, "forward to leader", f"{MSG_PREFIX}format http addr: {err}")
                )
                return
            host, port = addr.rsplit(":", 1)
            if meta.http_serving and int(port) == meta.http_port and common.is_local_host(host):
                self.forward_to_self(addr)
            else:
                self.proxy(addr)

        def forward_to_self(self, addr: str) -> None:
            """The leader's host with this member's port is this member (it binds 0.0.0.0): the real
            server sends the request to itself, again and again, each hop logged at INFO, until the
            caller gives up. Emulated: the request is held, one hop logged a second."""

            def hop(n: int) -> None:
                self.received(self.path.rsplit("/", 1)[-1], forwarded_to=addr, hop=n + 1)

            outcome = self.hold(lambda: True, cap_s=SELF_FORWARD_CAP_S, every_second=hop)
            if outcome == "cap":
                self.send_json(
                    500,
                    error_envelope(
                        500,
                        "forward to leader",
                        f'{MSG_PREFIX}{self.command} "http://{addr}{self.path}": dial tcp {addr}: socket: too many open files',
                    ),
                )
            else:
                self.close_connection = True

        def proxy(self, addr: str) -> None:
            request = urllib.request.Request(
                f"http://{addr}{self.path}",
                data=self.body if self.command == "POST" else None,
                method=self.command,
                headers={k: v for k, v in self.headers.items() if k.lower() in ("content-type", "accept")},
            )
            try:
                with urllib.request.urlopen(request, timeout=SELF_FORWARD_CAP_S) as response:
                    status, raw, ctype = (
                        response.status,
                        response.read(),
                        response.headers.get("Content-Type", ""),
                    )
            except urllib.error.HTTPError as err:
                status, raw, ctype = err.code, err.read(), err.headers.get("Content-Type", "")
            except OSError as err:
                _log("forward client send request failed", error=err)
                self.send_json(500, error_envelope(500, "forward to leader", f"{MSG_PREFIX}{err}"))
                return
            self.send_raw(status, raw, ctype or "application/json")

    return Handler
