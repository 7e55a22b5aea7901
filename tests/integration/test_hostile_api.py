"""The status API under hostile requests: no crash, bounded memory, /healthz keeps answering.

The daemon runs as its own process (its RSS is measured). Every request loop here is bounded in
count and time and sends traffic only to the daemon on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import aiohttp

from testkit.helpers import http_json

from .conftest import Cluster, eventually


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def raw(host: str, port: int, payload: bytes, timeout_s: float = 3.0) -> bytes:
    with socket.create_connection((host, port), timeout=timeout_s) as conn:
        conn.sendall(payload)
        chunks = []
        try:
            while chunk := conn.recv(65536):
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks):
                    break
        except (TimeoutError, ConnectionResetError):
            pass
        return b"".join(chunks)


async def test_api_survives_hostile_requests(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(meta=1, db=1)
    cluster.write()
    listen = cluster.text.split('listen = "', 1)[1].split('"', 1)[0]
    host, port = listen.split(":")[0], int(listen.split(":")[1])
    url = f"http://{listen}"
    process = subprocess.Popen(
        [sys.executable, "-m", "ceres_supervisor", "run", "-c", str(cluster.path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await eventually(lambda: http_json(f"{url}/healthz")[0] == 200, 30, "the API")
        await eventually(lambda: http_json(f"{url}/readyz")[0] == 200, 90, "the cluster healthy")
        baseline = rss_mib(process.pid)

        async with aiohttp.ClientSession() as session:
            # A body far over the limit is refused, not buffered.
            async with session.post(f"{url}/v1/reload", data=io.BytesIO(b"{" * (8 << 20))) as response:
                assert response.status == 413
            # Malformed JSON: the reload route reads no body: the file is reloaded as usual.
            async with session.post(
                f"{url}/v1/reload", data=b'{"a": [1, 2', headers={"Content-Type": "application/json"}
            ) as response:
                assert response.status == 200, await response.text()
            for method in ("PATCH", "PUT", "DELETE", "OPTIONS"):
                async with session.request(method, f"{url}/v1/status") as response:
                    assert response.status == 405, method
                    assert (await response.json())["status"] == 405
            for path, expected in (
                ("/v1/../../etc/passwd", 404),
                ("/%00", 404),
                ("/v1/status/" + "a" * 2000, 404),
                ("/v1/events?limit=-5", 200),
                ("/v1/events?limit=1000000000000", 200),
                ("/v1/events?limit=x", 400),
                ("/metrics?x=" + "%" * 100, 200),
            ):
                async with session.get(url + path) as response:
                    assert response.status == expected, (path, response.status)

        # Raw protocol abuse: an unknown method, garbage, a huge request line, a header bomb.
        for payload in (
            b"FOO /v1/status HTTP/1.1\r\nHost: x\r\n\r\n",
            b"\x00\x01\x02garbage\r\n\r\n",
            b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\n"
            + b"".join(b"X-%d: %s\r\n" % (i, b"y" * 4000) for i in range(300))
            + b"\r\n",
        ):
            answer = await asyncio.to_thread(raw, host, port, payload)
            # aiohttp answers malformed HTTP itself (400, before any handler), or closes.
            assert answer == b"" or answer[:10] in (b"HTTP/1.1 4", b"HTTP/1.0 4"), answer[:100]

        # Many slow clients (bounded: 200 sockets, 6 s): /healthz keeps answering meanwhile.
        slow = []
        for _ in range(200):
            s = socket.create_connection((host, port), timeout=2)
            s.sendall(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n")
            slow.append(s)
        for _ in range(30):  # while the slow clients trickle, each /healthz answers within its deadline
            for s in slow[:50]:
                with contextlib.suppress(OSError):
                    s.sendall(b"X-Slow: 1\r\n")
            code, _body = await asyncio.to_thread(http_json, f"{url}/healthz", None, 2.0)
            assert code == 200  # (latency figures: bench/steady.py)
        for s in slow:
            s.close()

        # A burst of concurrent status requests.
        async with aiohttp.ClientSession() as session:

            async def one() -> int:
                async with session.get(f"{url}/v1/status") as response:
                    await response.read()
                    return response.status

            statuses = await asyncio.gather(*(one() for _ in range(500)))
        assert set(statuses) == {200}
        assert process.poll() is None, "the daemon died"
        assert http_json(f"{url}/healthz")[0] == 200
        grown = rss_mib(process.pid) - baseline
        assert grown < 100, f"RSS grew by {grown:.1f} MiB"  # bounded, not leaking per request
    finally:
        process.terminate()
        await asyncio.to_thread(process.wait, 30)
