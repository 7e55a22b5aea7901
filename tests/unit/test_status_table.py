"""`ceres-supervisor status` as people read it: on a terminal every line fits and a reason that does
not fit its column is shown whole under its node (wrapped, never cut); piped, nothing is cut;
REASON is left out while no node has one; `-o wide` adds the agent, last exit and container;
a lost machine shows as an agent DOWN line and its nodes unknown."""

from __future__ import annotations

from datetime import UTC, datetime

from ceres_supervisor.cli import tables

NOW = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)
LONG = (
    "unhealthy: 3 failed probes: GET /: cannot connect (Connection refused) and a lot more text that "
    "would never fit on one line of a terminal"
)


def node(
    name: str,
    role: str,
    state: str,
    reason: str | None,
    started: str | None = "2026-11-26T10:49:30Z",
    held: bool | None = True,
    host: str = "127.0.0.1",
) -> dict[str, object]:
    ports = (
        {"client": 2379, "peer": 2380, "http": 8080}
        if role == "meta"
        else {"grpc": 8831, "http": 5440, "mysql": 3307}
    )
    return {
        "name": name,
        "role": role,
        "host": host,
        "agent": host,
        "ports": ports,
        "state": state,
        "reason": reason,
        "health": {"ok": state == "healthy", "detail": None, "checked_at": None},
        "lease": None
        if role == "meta"
        else {"held": held, "shards": [0, 2, 4, 6] if held else [], "detail": None},
        "restarts": 3,
        "started_at": started,
        "container_id": "0b1c2d3e4f5a6b7c8d9e",
        "last_exit": {"code": 137, "oom": False, "at": "2026-11-26T11:00:00Z"},
    }


DOC = {
    "cluster": {"name": "defaultCluster", "state": "degraded", "spec_hash": "603b3a56883a679c"},
    "reload": {
        "ok": False,
        "error": "cluster.toml: invalid desired state (1 problem)\n  ceresdb.lease: must be under 15s",
        "at": "2026-11-26T11:59:00Z",
    },
    "nodes": [
        node("meta0", "meta", "healthy", None),
        node("db0", "ceresdb", "backoff", LONG, started=None, held=None),
        node("db1", "ceresdb", "lease_lost", "shards 1,3,5,7 not locked by 127.0.0.1:8832", held=False),
    ],
}


def test_at_80_columns_every_line_fits_and_no_reason_is_cut() -> None:
    lines = tables.table(DOC, width=80, now=NOW).splitlines()
    assert all(len(line) <= 80 for line in lines), [len(line) for line in lines]
    assert lines[0].startswith("cluster defaultCluster: degraded")
    assert "reload FAILED" in lines[1]
    header = next(line for line in lines if line.startswith("NAME"))
    # The reasons do not all fit a column: each goes under its node, whole.
    assert header.split() == [
        "NAME",
        "ROLE",
        "HOST",
        "PORTS",
        "STATE",
        "HEALTH",
        "LEASE",
        "RESTARTS",
        "UPTIME",
    ]
    db0 = lines.index(next(line for line in lines if line.startswith("db0")))
    under = []
    for line in lines[db0 + 1 :]:
        if not line.startswith("    "):
            break
        under.append(line.strip())
    assert " ".join(under) == LONG and "..." not in "\n".join(lines)
    meta0 = next(line for line in lines if line.startswith("meta0"))
    assert "2379/2380/8080" in meta0 and "1h10m" in meta0
    assert " lost " in next(line for line in lines if line.startswith("db1"))


def test_a_wide_terminal_shows_the_reasons_in_their_column() -> None:
    lines = tables.table(DOC, width=300, now=NOW).splitlines()
    assert next(line for line in lines if line.startswith("NAME")).split()[-1] == "REASON"
    assert next(line for line in lines if line.startswith("db0")).endswith(LONG)


def test_piped_output_is_never_cut_to_80_columns() -> None:
    lines = tables.table(DOC, width=None, now=NOW).splitlines()
    assert next(line for line in lines if line.startswith("db0")).endswith(LONG)
    assert max(map(len, lines)) > 80


def test_no_reason_column_while_no_node_has_one() -> None:
    healthy = {
        **DOC,
        "nodes": [node("meta0", "meta", "healthy", None), node("db0", "ceresdb", "healthy", None)],
    }
    header = next(
        line for line in tables.table(healthy, width=None, now=NOW).splitlines() if line.startswith("NAME")
    )
    assert "REASON" not in header


def test_wide_output_adds_the_agent_last_exit_and_container() -> None:
    lines = tables.table(DOC, width=None, now=NOW, wide=True).splitlines()
    header = next(line for line in lines if line.startswith("NAME"))
    assert [c for c in ("AGENT", "LAST EXIT", "CONTAINER") if c in header] == [
        "AGENT",
        "LAST EXIT",
        "CONTAINER",
    ]
    db0 = next(line for line in lines if line.startswith("db0"))
    assert " 137 " in db0 and "0b1c2d3e4f5a " in db0 and db0.endswith(LONG)


def test_a_lost_machine_and_hostile_text() -> None:
    doc = {
        "cluster": {"name": "c", "state": "unknown", "spec_hashes": {"127.0.0.1": "a", "127.0.0.2": "a"}},
        "coordination": {"ok": True},
        "meta": {"leader": "meta0"},
        "agents": [
            {"host": "127.0.0.1", "state": "up"},
            {"host": "127.0.0.2", "state": "down", "since": "2026-11-26T11:58:00Z"},
            {"host": "127.0.0.3", "state": "down", "since": None, "heartbeat_at": None},
        ],
        "nodes": [
            node("meta0", "meta", "healthy", None),
            node(
                "db1",
                "ceresdb",
                "unknown",
                "supervisor on 127.0.0.2 down since 2026-11-26T11:58:00Z\x1b[2J",
                host="127.0.0.2",
                held=None,
            ),
        ],
        "disruptions": [
            {"node": "db0", "host": "127.0.0.1", "reason": "planned", "since": "2026-11-26T11:50:00Z"}
        ],
    }
    text = tables.table(doc, width=None, now=NOW)
    assert "agent 127.0.0.2 DOWN since 2026-11-26T11:58:00Z" in text
    assert "agent 127.0.0.3 DOWN (never seen: no supervisor runs for it)" in text
    assert "meta leader: meta0" in text
    assert "disruption slot: db0 by 127.0.0.1 (planned, held 10m00s)" in text
    db1 = next(line for line in text.splitlines() if line.startswith("db1"))
    assert "unknown" in db1 and "supervisor on 127.0.0.2 down since" in db1
    assert "\x1b" not in text  # a hostile reason never reaches the terminal raw
