"""The status page (`GET /`) in a real headless Chromium: first a hand-made document on a small
aiohttp server (fast; checks the page itself in a browser, under the API's CSP), then the real
daemon on a real cluster with one CeresDB node that exits at once on every start.

Then a lost machine: two agents on one file (127.0.0.1 in this process, 127.0.0.2 as its own
process); the second is killed, and the page must show its node unknown and its agent down.

Chromium comes from `scripts/ensure-chromium.sh` (`make test` runs it); when it is missing the
test fails and says so. Screenshots are kept in tests/artifacts/.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import struct
import tempfile
import zlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from ceres_supervisor.surfaces import page
from testkit.helpers import free_ports

from .conftest import Cluster, Daemon, eventually

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CHROMIUM_TIMEOUT_S = 60.0
CSP = "default-src 'none'; style-src 'unsafe-inline'"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,900",
)
"""The network here is closed: these flags keep Chromium from its own background connections."""
TONE_COLOURS = {"ok": (0x1F, 0x8A, 0x3B), "bad": (0xB4, 0x23, 0x18), "off": (0x6B, 0x72, 0x80)}
"""Badge colours of page.py's CSS: seen in the screenshot only if the inline style was applied."""


def chromium_binary() -> str:
    found = shutil.which(os.environ.get("CHROMIUM", "chromium"))
    if found is None:
        pytest.fail("no chromium on PATH: run scripts/ensure-chromium.sh (make test does)", pytrace=False)
    return found


async def chromium(url: str, output: str) -> str:
    """Run headless Chromium once on `url` with `output` (`--dump-dom` or `--screenshot=PATH`);
    its stdout. Its whole process group is killed on timeout; its profile is removed."""
    profile = tempfile.mkdtemp(prefix="ceres-chromium-")
    try:
        process = await asyncio.create_subprocess_exec(
            chromium_binary(),
            *FLAGS,
            f"--user-data-dir={profile}",
            output,
            url,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        try:
            async with asyncio.timeout(CHROMIUM_TIMEOUT_S):
                stdout, stderr = await process.communicate()
        except TimeoutError:
            os.killpg(process.pid, signal.SIGKILL)  # its own session: the browser and its helpers
            await process.communicate()
            raise AssertionError(
                f"chromium {output} {url} did not finish within {CHROMIUM_TIMEOUT_S}s"
            ) from None
        finally:
            if process.returncode is None:
                os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
        assert process.returncode == 0, (
            f"chromium exited {process.returncode}: {stderr.decode(errors='replace')[-2000:]}"
        )
        return stdout.decode()
    finally:
        await asyncio.to_thread(shutil.rmtree, profile, ignore_errors=True)


def fresh(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)


async def look(url: str, screenshot: Path) -> Rows:
    """The DOM Chromium built from the page (its table rows), and a screenshot of it."""
    dom = await chromium(url, "--dump-dom")
    await asyncio.to_thread(fresh, screenshot)
    await chromium(url, f"--screenshot={screenshot}")
    size = (await asyncio.to_thread(screenshot.stat)).st_size
    assert size > 10_000, f"a screenshot of {size} bytes is an empty page"
    return Rows(dom)


class Rows(HTMLParser):
    """The node rows of the DOM: name -> (class, cell texts); and the page's title."""

    def __init__(self, dom: str) -> None:
        super().__init__()
        self.dom = dom
        self.nodes: dict[str, tuple[str, list[str]]] = {}
        self.title = ""
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._in_title = False
        self.feed(dom)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "tr" and a.get("data-node") is not None:
            self._row = []
            self.nodes[str(a["data-node"])] = (str(a.get("class")), self._row)
        elif tag == "td" and self._row is not None:
            self._cell = []
        self._in_title = tag == "title"

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._row is not None and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr":
            self._row = None
        self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._in_title:
            self.title += data


def pixels(png: Path) -> set[tuple[int, int, int]]:
    """The distinct RGB colours of an 8-bit RGB or RGBA, non-interlaced PNG (what Chromium writes)."""
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos : pos + 4]), data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        header = body if kind == b"IHDR" else header
        idat += body if kind == b"IDAT" else b""
        pos += 12 + length
    width, height, depth, colour, _c, _f, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
    bpp = 3 if colour == 2 else 4
    raw, stride = zlib.decompress(idat), width * bpp
    previous, seen = bytearray(stride), set[tuple[int, int, int]]()
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - bpp] if i >= bpp else 0
            up, corner = previous[i], previous[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 0xFF
        seen.update(zip(line[0::bpp], line[1::bpp], line[2::bpp], strict=True))
        previous = line
    return seen


def hand_made(now: datetime) -> dict[str, Any]:
    def node(name: str, state: str, reason: str | None = None, ok: bool | None = True) -> dict[str, Any]:
        return {
            "name": name,
            "role": "meta" if name.startswith("meta") else "ceresdb",
            "host": "127.0.0.1",
            "agent": "127.0.0.1",
            "state": state,
            "reason": reason,
            "restarts": 0 if ok else 3,
            "health": {"ok": ok, "detail": "GET / 200" if ok else "connection refused", "checked_at": None},
            "lease": None
            if name.startswith("meta")
            else {"held": bool(ok), "shards": [0, 2] if ok else [], "detail": None},
            "next_restart_at": None if ok else (now + timedelta(seconds=20)).isoformat(),
        }

    return {
        "cluster": {
            "name": "defaultCluster",
            "state": "degraded",
            "spec_hashes": {"127.0.0.1": "9f2c01"},
            "spec_agrees": True,
        },
        "coordination": {"ok": True, "detail": None, "endpoint": "http://127.0.0.1:2379", "unreadable": []},
        "meta": {"leader": "meta0", "members": ["meta0"]},
        "agents": [{"host": "127.0.0.1", "state": "up", "heartbeat_at": None, "listen": "127.0.0.1:5480"}],
        "nodes": [
            node("meta0", "healthy"),
            node("db0", "healthy"),
            node("db1", "backoff", "<script>alert(1)</script> exit 3", None),
            node("db2", "unknown", "no supervisor publishes it", None),
        ],
        "disruptions": [],
        "paused": {"all": False, "nodes": []},
    }


@pytest.fixture
async def sample_server() -> AsyncIterator[Callable[[], str]]:
    """An aiohttp server answering `/` with page.render() of a hand-made document, under the CSP."""

    async def index(_request: web.Request) -> web.Response:
        now = datetime.now(UTC)
        events = [
            {
                "at": now.isoformat(),
                "node": "db1",
                "type": "died",
                "reason": "exit 3",
                "message": "died: exit 3",
            }
        ]
        return web.Response(
            text=page.render(hand_made(now), events, now),
            content_type="text/html",
            headers={"Content-Security-Policy": CSP},
        )

    app = web.Application()
    app.router.add_get("/", index)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield lambda: f"http://{host}:{port}/"
    finally:
        await runner.cleanup()


async def test_the_page_in_a_real_browser(sample_server: Callable[[], str]) -> None:
    shot = ARTIFACTS / "status-page-sample.png"
    rows = await look(sample_server(), shot)
    assert rows.title == "degraded - defaultCluster - ceres-supervisor"
    assert {n: (cls, cells[3]) for n, (cls, cells) in rows.nodes.items()} == {
        "meta0": ("node tone-ok", "healthy"),
        "db0": ("node tone-ok", "healthy"),
        "db1": ("node tone-bad", "backoff"),
        "db2": ("node tone-off", "unknown"),
    }
    assert rows.nodes["db1"][1][8].startswith("<script>alert(1)</script> exit 3")  # shown as text
    assert "<script" not in rows.dom  # the browser made no element of it
    colours = await asyncio.to_thread(pixels, shot)
    assert all(rgb in colours for rgb in TONE_COLOURS.values()), "the inline CSS was not applied (CSP?)"


async def test_the_daemon_serves_the_page_under_its_policy(make_cluster: Callable[..., Cluster]) -> None:
    """Before any node is healthy: every node of the file is a row, and the page's headers hold."""
    chromium_binary()
    cluster = make_cluster(meta=1, db=2)
    await cluster.start()
    async with aiohttp.ClientSession() as session, session.get(cluster.api_url + "/") as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/html; charset=utf-8"
        assert response.headers["Content-Security-Policy"] == CSP
    rows = await look(cluster.api_url + "/", ARTIFACTS / "status-page-starting.png")
    assert sorted(rows.nodes) == ["db0", "db1", "meta0"]
    assert rows.title.endswith(f" - {cluster.name} - ceres-supervisor")


def shows_db1_down(rows: Rows, cluster: str) -> Rows:
    """The page as it must look: db1 down with its reason, the others healthy (else it raises)."""
    cls, cells = rows.nodes["db1"]
    assert cells[3] in ("backoff", "crashloop") and cls == "node tone-bad", ("db1", cls, cells)
    assert "exit 3" in cells[8], ("db1", cells)
    for name in ("meta0", "db0"):
        cls, cells = rows.nodes[name]
        assert (cls, cells[3], cells[4]) == ("node tone-ok", "healthy", "ok"), (name, cls, cells)
    assert rows.nodes["db0"][1][5].startswith("held ("), rows.nodes["db0"]  # its shard locks
    assert rows.title.startswith(f"degraded - {cluster} "), rows.title
    assert "exit 3" in rows.dom.split('id="events"', 1)[1]  # the death is among the last events
    return rows


async def test_the_page_of_a_real_cluster_with_a_node_down(make_cluster: Callable[..., Cluster]) -> None:
    chromium_binary()  # fail before a cluster starts when there is no browser
    cluster = make_cluster(meta=1, db=2, supervisor={"backoff_initial": "30s", "backoff_max": "60s"})
    await cluster.start()
    await cluster.healthy(90)
    db1 = await cluster.container("db1")
    await asyncio.to_thread(db1.exec_run, ["ceres-emulator-fault", "exit", "3"])  # exits 3 on every start
    await eventually(lambda: cluster.state("db1") in ("backoff", "crashloop"), 30, "db1 down in backoff")

    # db0 may still be reopening shards (meta moves them as nodes come and go): poll the page in
    # the browser until it shows the settled picture, well within db1's 30 s backoff.
    url = cluster.api_url + "/"

    async def settled() -> Rows:
        return shows_db1_down(Rows(await chromium(url, "--dump-dom")), cluster.name)

    rows: Rows = await eventually(
        settled, 20, "the page showing db1 down and the others healthy", interval_s=0.5
    )
    assert sorted(rows.nodes) == ["db0", "db1", "meta0"]  # every node of the file, one row each
    shot = ARTIFACTS / "status-page.png"
    shows_db1_down(await look(url, shot), cluster.name)  # the same picture, screenshot alongside
    colours = await asyncio.to_thread(pixels, shot)
    assert TONE_COLOURS["ok"] in colours and TONE_COLOURS["bad"] in colours


async def test_the_page_shows_a_lost_machine(
    make_cluster: Callable[..., Cluster], daemons: list[Daemon], tmp_path: Path
) -> None:
    chromium_binary()
    cluster = make_cluster(meta=1, db=2, supervisor={"agent_ttl": "3s"})  # db1 is on 127.0.0.2
    await cluster.start(host="127.0.0.1")
    second = Daemon(cluster.path, tmp_path / "agent-127.0.0.2.log", host="127.0.0.2")
    second.listen = f"127.0.0.2:{free_ports(1)[0]}"
    daemons.append(second.start())

    async def whole() -> bool:
        async with (
            aiohttp.ClientSession() as session,
            session.get(cluster.api_url + "/v1/cluster") as response,
        ):
            doc = await response.json()
        return doc["cluster"]["state"] == "healthy" and len(doc["agents"]) == 2

    await eventually(whole, 150, f"both agents up and the cluster healthy (agent 2: {second.tail(5)})", 0.5)
    assert second.process is not None
    os.kill(second.process.pid, signal.SIGKILL)  # the machine is lost: nobody says goodbye
    second.wait(10)
    url = cluster.api_url + "/"

    async def lost() -> Rows:
        rows = Rows(await chromium(url, "--dump-dom"))
        cls, cells = rows.nodes["db1"]
        assert (cls, cells[3]) == ("node tone-off", "unknown"), ("db1", cls, cells)
        assert cells[8].startswith("supervisor on 127.0.0.2 down since"), cells
        assert "127.0.0.2" in cells[2], cells  # its host (and the agent that ran it)
        for name in ("meta0", "db0"):
            assert rows.nodes[name][1][3] == "healthy", rows.nodes[name]
        facts = re.sub(r"<[^>]+>", "", rows.dom.split('class="facts"', 1)[1].split("</ul>", 1)[0])
        assert "127.0.0.2 down since" in facts and "unknown" in facts.split("nodes:", 1)[1], facts
        assert rows.title.startswith(f"unknown - {cluster.name} "), rows.title
        return rows

    await eventually(lost, 30, "the page showing db1 unknown and agent 127.0.0.2 down", interval_s=0.5)
    shot = ARTIFACTS / "status-page-lost-machine.png"
    await lost_shot(url, shot)
    colours = await asyncio.to_thread(pixels, shot)
    assert TONE_COLOURS["off"] in colours and TONE_COLOURS["ok"] in colours and TONE_COLOURS["bad"] in colours


async def lost_shot(url: str, shot: Path) -> None:
    rows = await look(url, shot)
    assert rows.nodes["db1"][1][3] == "unknown"
