"""One etcd client in this fresh process (run by storeclient.py, in either virtualenv).

    python bench/storechild.py grpc|gateway HOST PORT CALLS

`grpc`: aetcd (a maintained asyncio gRPC client; installed only in a temporary virtualenv);
`gateway`: `ceres_supervisor.adapters.etcd.Etcd`, the project's client of etcd's JSON gateway over aiohttp.
Reads VmRSS (MiB) at start, after `import aiohttp` (which the daemon has anyway), after importing
the client, after creating it and writing one key (which connects), and after CALLS reads of that
key; the CPU and wall time of those reads. Prints one JSON line.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
import time
from collections.abc import Awaitable, Callable
from importlib import metadata
from pathlib import Path
from typing import Any

KEY = b"/ceres-bench/store-client"


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def measure(kind: str, host: str, port: int, calls: int) -> dict[str, Any]:
    rss = {"python": rss_mib()}
    aiohttp = importlib.import_module("aiohttp")
    rss["aiohttp"] = rss_mib()
    read: Callable[[], Awaitable[object]]
    if kind == "grpc":
        aetcd = importlib.import_module("aetcd")
        rss["imported"] = rss_mib()
        client = aetcd.Client(host=host, port=port)
        await client.put(KEY, b"value")
        versions = {p: metadata.version(p) for p in ("aetcd", "grpcio", "protobuf")}

        def read() -> Awaitable[object]:
            return client.get(KEY)
    else:
        etcd = importlib.import_module("ceres_supervisor.adapters.etcd")
        rss["imported"] = rss_mib()
        session = aiohttp.ClientSession()
        client = etcd.Etcd(session, [f"http://{host}:{port}"], 2.0)
        await client.put(KEY, b"value")
        versions = {p: metadata.version(p) for p in ("aiohttp",)}

        def read() -> Awaitable[object]:
            return client.range(KEY)

    rss["client"] = rss_mib()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(calls):
        await read()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    rss["reads"] = rss_mib()
    await (client.close() if kind == "grpc" else session.close())
    return {"rss": rss, "cpu_s": cpu, "wall_s": wall, "versions": versions}


if __name__ == "__main__":
    kind, host, port, calls = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    print(json.dumps(asyncio.run(measure(kind, host, port, calls))))
