"""page.render(): the status page from hand-made /v1/cluster documents. Pure; HTML read back with
the standard library's parser, no browser (tests/integration/test_page.py uses a real one)."""

from __future__ import annotations

import copy
import re
from datetime import UTC, datetime
from html.parser import HTMLParser
from typing import Any

import pytest

from ceres_supervisor.decisions.planning import ClusterState, NodeState
from ceres_supervisor.surfaces import page

NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)
HOSTILE = "<script>alert(1)</script>"


def node(name: str, role: str = "ceresdb", state: str = "healthy", **changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": name,
        "role": role,
        "host": "127.0.0.1",
        "agent": "127.0.0.1",
        "ports": {"grpc": 8831, "http": 5440, "mysql": 3307}
        if role == "ceresdb"
        else {"client": 2379, "peer": 2380, "http": 8080},
        "container_id": "0b1c",
        "image": "ceresdb/ceresdb-server:v1.2.2",
        "state": state,
        "reason": None,
        "health": {"ok": True, "detail": "GET / 200", "checked_at": "2026-11-28T11:59:59.000Z"},
        "lease": None if role == "meta" else {"held": True, "shards": [0, 3, 6], "detail": None},
        "restarts": 0,
        "last_exit": None,
        "next_restart_at": None,
        "started_at": "2026-11-28T11:00:00.000Z",
    }
    doc.update(changes)
    return doc


def healthy() -> dict[str, Any]:
    return {
        "cluster": {
            "name": "defaultCluster",
            "state": "healthy",
            "spec_hashes": {"127.0.0.1": "9f2c01"},
            "spec_agrees": True,
        },
        "coordination": {"ok": True, "detail": None, "endpoint": "http://127.0.0.1:2379", "unreadable": []},
        "meta": {"leader": "meta0", "members": ["meta0"]},
        "agents": [
            {
                "host": "127.0.0.1",
                "state": "up",
                "heartbeat_at": "2026-11-28T11:59:58Z",
                "listen": "127.0.0.1:5480",
            }
        ],
        "nodes": [
            node("meta0", "meta"),
            node("db0"),
            node("db1", lease={"held": True, "shards": [1, 4, 7], "detail": None}),
        ],
        "disruptions": [],
        "paused": {"all": False, "nodes": []},
    }


def degraded() -> dict[str, Any]:
    doc = healthy()
    doc["cluster"].update(
        state="degraded", spec_hashes={"127.0.0.1": "9f2c01", "127.0.0.2": "77aa00"}, spec_agrees=False
    )
    doc["agents"].append(
        {
            "host": "127.0.0.2",
            "state": "down",
            "heartbeat_at": "2026-11-28T11:58:00Z",
            "listen": None,
            "since": "2026-11-28T11:58:10Z",
        }
    )
    doc["nodes"][1] = node(
        "db0",
        "ceresdb",
        "backoff",
        reason="exit 3",
        restarts=4,
        last_exit={"code": 3, "oom": False, "at": "2026-11-28T11:59:50Z"},
        health={"ok": False, "detail": "GET /: connection refused", "checked_at": None},
        lease={"held": False, "shards": [], "detail": "no shard lock"},
        next_restart_at="2026-11-28T12:00:25Z",
    )
    doc["nodes"][2] = node(
        "db1",
        state="unknown",
        agent="127.0.0.2",
        reason="supervisor on 127.0.0.2 down since 2026-11-28T11:58:10Z",
        health={"ok": None, "detail": None, "checked_at": None},
        restarts=None,
        lease={"held": None, "shards": [], "detail": None},
    )
    doc["disruptions"] = [
        {"node": "db0", "host": "127.0.0.1", "reason": "health restart", "since": "2026-11-28T11:59:00Z"}
    ]
    doc["paused"] = {"all": False, "nodes": ["meta0"]}
    return doc


EVENTS = [
    {
        "at": f"2026-11-28T11:59:{i:02d}.000Z",
        "node": "db0",
        "type": "died",
        "reason": "exit 3",
        "message": f"event {i}",
    }
    for i in range(30)
]


class Rows(HTMLParser):
    """Each `<tr>` of the page: its class, data-node and the text of its cells."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.rows: list[tuple[str, str | None, list[str]]] = []
        self.badges: list[tuple[str, str]] = []
        self._badge: str | None = None
        self._cell: list[str] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "tr":
            self.rows.append((a.get("class") or "", a.get("data-node"), []))
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "span" and "badge" in (a.get("class") or ""):
            self._badge = a.get("class") or ""

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self.rows:
            self.rows[-1][2].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._badge is not None:
            self.badges.append((self._badge, data))
            self._badge = None

    def node(self, name: str) -> tuple[str, list[str]]:
        found = [(cls, cells) for cls, n, cells in self.rows if n == name]
        assert len(found) == 1, f"{len(found)} rows for node {name}"
        return found[0]

    def events(self) -> list[list[str]]:
        return [cells for cls, _n, cells in self.rows if cls == "event"]


def test_healthy_cluster() -> None:
    text = page.render(healthy(), EVENTS[:2], NOW)
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    assert '<meta http-equiv="refresh" content="5">' in text
    rows = Rows(text)
    assert ("badge tone-ok", "healthy") in rows.badges
    assert "defaultCluster" in text and "coordination: ok" in text and "etcd 127.0.0.1:2379" in text
    for name in ("meta0", "db0", "db1"):
        cls, cells = rows.node(name)
        assert cls == "node tone-ok"
        assert cells[0] == name and cells[3] == "healthy" and cells[4] == "ok"
    assert rows.node("meta0")[1][2] == "127.0.0.1"  # its agent is on its own host
    assert rows.node("meta0")[1][5] == "-"  # meta holds no lease
    assert rows.node("db1")[1][5] == "held (1, 4, 7)"
    assert "files differ" not in text and "disruption slot" not in text and "paused" not in text
    assert 'class="alert"' not in text


def test_degraded_cluster() -> None:
    text = page.render(degraded(), EVENTS, NOW)
    rows = Rows(text)
    assert ("badge tone-bad", "degraded") in rows.badges
    cls, cells = rows.node("db0")
    assert cls == "node tone-bad"
    assert cells[3:9] == ["backoff", "fail", "not held", "4", "3", "exit 3 (next restart in 25s)"]
    cls, cells = rows.node("db1")
    assert cls == "node tone-off"
    assert cells[2] == "127.0.0.1 (127.0.0.2)" and cells[3] == "unknown" and cells[6] == "-"
    assert "supervisor on 127.0.0.2 down since" in cells[8]
    assert "127.0.0.2 down since 2026-11-28T11:58:10Z" in text  # the agent that is gone
    assert "files differ" in text and "9f2c01" in text and "77aa00" in text
    assert "disruption slot: <b>db0</b> held by 127.0.0.1 since 2026-11-28T11:59:00Z (for 1m)" in text
    assert "paused: meta0" in text
    # The last 20 events, newest first.
    events = rows.events()
    assert len(events) == page.EVENTS_SHOWN
    assert [e[4] for e in events[:2]] == ["event 29", "event 28"] and events[-1][4] == "event 10"
    assert events[0][0] == "31s ago"


def test_store_unavailable_and_no_events() -> None:
    doc = healthy()
    doc["cluster"]["state"] = "unknown"
    doc["coordination"] = {
        "ok": False,
        "detail": "no etcd member answers",
        "endpoint": None,
        "unreadable": [],
    }
    text = page.render(doc, [], NOW)
    assert "coordination unavailable: no etcd member answers" in text
    assert "no events yet" in text


def hostile() -> dict[str, Any]:
    doc = degraded()
    doc["cluster"]["name"] = HOSTILE
    doc["cluster"]["spec_hashes"][HOSTILE] = HOSTILE
    doc["coordination"]["unreadable"] = [{"key": HOSTILE, "why": "not JSON"}]
    doc["agents"][1]["host"] = HOSTILE
    doc["nodes"][1].update(
        reason=HOSTILE,
        name=HOSTILE,
        state=HOSTILE,
        agent=HOSTILE,
        health={"ok": False, "detail": '" onmouseover="alert(1)', "checked_at": None},
        lease={"held": True, "shards": [HOSTILE], "detail": "'><img src=x>"},
    )
    doc["nodes"][2]["reason"] = '<img src="https://evil.example/x.png">'
    doc["disruptions"][0]["reason"] = HOSTILE
    doc["paused"]["nodes"] = [HOSTILE]
    return doc


def test_hostile_values_come_out_escaped() -> None:
    events = [{"at": HOSTILE, "node": HOSTILE, "type": HOSTILE, "reason": HOSTILE, "message": HOSTILE}]
    text = page.render(hostile(), events, NOW)
    assert "<script" not in text.lower() and "<img" not in text.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert '" onmouseover' not in text and "&quot; onmouseover=&quot;alert(1)" in text
    rows = Rows(text)  # the structure holds: the hostile node is still one row of 8 cells
    cls, cells = rows.node(HOSTILE)
    assert (
        cls == "node tone-off"
        and len(cells) == 9
        and cells[8].startswith(HOSTILE + " (next restart")
        and cells[3] == HOSTILE
    )
    assert rows.events()[0][1:] == [HOSTILE] * 4
    error = page.render_error(HOSTILE)
    assert "<script" not in error and "&lt;script&gt;" in error


@pytest.mark.parametrize("state", [*NodeState, "something-new"])
def test_every_state_has_a_colour_class(state: str) -> None:
    doc = healthy()
    doc["nodes"][1]["state"] = str(state)
    cls, _cells = Rows(page.render(doc, [], NOW)).node("db0")
    tone = cls.removeprefix("node tone-")
    expected = {
        "healthy": "ok",
        "unhealthy": "warn",
        "lease_lost": "warn",
        "backoff": "bad",
        "crashloop": "bad",
        "unknown": "off",
        "remote": "off",
        "stopped": "off",
        "something-new": "off",
    }.get(str(state), "busy")  # starting, reopening, blocked, pending, paused, stopping
    assert tone == expected
    assert re.search(rf"\.tone-{tone}\{{background:#[0-9a-f]{{6}}\}}", page.render(doc, [], NOW))


@pytest.mark.parametrize("state", list(ClusterState))
def test_every_cluster_state_has_a_colour(state: ClusterState) -> None:
    doc = healthy()
    doc["cluster"]["state"] = str(state)
    badge = Rows(page.render(doc, [], NOW)).badges[0]
    assert badge == (f"badge tone-{page.tone(state)}", str(state))
    assert str(state) in page.TONES


class Tags(HTMLParser):
    """Every start tag of a page, with its attributes."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


ALLOWED_TAGS = {
    "html",
    "head",
    "meta",
    "title",
    "style",
    "body",
    "h1",
    "h2",
    "ul",
    "li",
    "span",
    "b",
    "code",
    "p",
    "table",
    "thead",
    "tbody",
    "tr",
    "th",
    "td",
}


@pytest.mark.parametrize("which", ["healthy", "degraded", "hostile", "error"])
def test_nothing_is_loaded_from_anywhere(which: str) -> None:
    if which == "error":
        text = page.render_error("the snapshot is not there")
    else:
        doc = {"healthy": healthy, "degraded": degraded, "hostile": hostile}[which]()
        events = (
            [{**e, "message": HOSTILE + ' src="https://evil.example/"'} for e in EVENTS]
            if which == "hostile"
            else EVENTS
        )
        text = page.render(doc, copy.deepcopy(events), NOW)
    tags = Tags(text).tags
    assert {tag for tag, _attrs in tags} <= ALLOWED_TAGS
    for tag, attrs in tags:
        assert not set(attrs) & {"src", "href", "style", "action", "srcset"}, (tag, attrs)
        assert not any(name.startswith("on") for name in attrs), (tag, attrs)
    style = text[text.index("<style>") : text.index("</style>")]
    assert "@import" not in style and "url(" not in style and "http" not in style
    if which != "hostile":  # hostile values carry such text (escaped, never markup): see above
        lowered = text.lower()
        for needle in ("http://", "https://", "src=", "@import", "<script"):
            assert needle not in lowered, needle


def test_malformed_document_still_renders() -> None:
    """A document with wrong types (a record from another machine) renders, it does not raise."""
    text = page.render(
        {"cluster": "x", "nodes": [None, 3, {"name": 5, "lease": [], "health": "x"}], "agents": {}}, [], NOW
    )
    assert Rows(text).node("5")[1][3] == "-"


def test_the_on_call_signals_in_the_header() -> None:
    """Nodes by state (unknown ones counted), this supervisor's Docker and reload, no leader, and a
    host of the file whose supervisor was never seen."""
    doc = degraded()
    doc["meta"]["leader"] = None
    doc["nodes"].append(
        node(
            "db2",
            state="unknown",
            host="127.0.0.3",
            agent=None,
            reason="no supervisor publishes it (its host is 127.0.0.3)",
            health={"ok": None, "detail": None, "checked_at": None},
        )
    )
    local = {
        "engine": {"ok": False, "error": "Docker Engine unavailable: no socket at /run/docker.sock"},
        "reload": {
            "ok": False,
            "error": "cluster.toml: invalid desired state (1 problem)\n  x: unknown key",
            "at": "2026-11-28T11:50:00Z",
        },
    }
    text = page.render(doc, [], NOW, local)
    facts = re.sub(r"<[^>]+>", "", text.split('<ul class="facts">', 1)[1].split("</ul>", 1)[0])
    assert "nodes: 1 healthy, 1 backoff, 2 unknown" in facts
    assert "Docker Engine unreachable: Docker Engine unavailable: no socket at /run/docker.sock" in facts
    assert (
        "last reload FAILED at 2026-11-28T11:50:00Z: cluster.toml: invalid desired state (1 problem) / x: unknown key"
        in facts
    )
    assert "no meta leader" in facts
    assert "127.0.0.2 down since 2026-11-28T11:58:10Z" in facts
    assert "127.0.0.3 down never seen: no supervisor runs for it" in facts
    healthy_local = {
        "engine": {"ok": True, "error": None},
        "reload": {"ok": True, "error": None, "at": "2026-11-28T11:00:00Z"},
    }
    text = page.render(healthy(), [], NOW, healthy_local)
    assert "Docker Engine: reachable" in text and "last reload: applied at 2026-11-28T11:00:00Z" in text
    assert 'class="alert"' not in text

    # Without the store nobody can tell whether 127.0.0.3's supervisor ever ran: no claim.
    doc["coordination"] = {
        "ok": False,
        "detail": "no etcd member answers",
        "endpoint": None,
        "unreadable": [],
    }
    assert "never seen" not in page.render(doc, [], NOW)


def test_an_agent_row_never_seen() -> None:
    """The cluster document lists every host of the file; one whose supervisor never ran has no time."""
    doc = healthy()
    doc["agents"].append(
        {
            "host": "127.0.0.9",
            "state": "down",
            "heartbeat_at": None,
            "listen": None,
            "advertise": None,
            "since": None,
        }
    )
    facts = re.sub(
        r"<[^>]+>", "", page.render(doc, [], NOW).split('<ul class="facts">', 1)[1].split("</ul>", 1)[0]
    )
    assert "127.0.0.9 down never seen: no supervisor runs for it" in facts and "since -" not in facts
