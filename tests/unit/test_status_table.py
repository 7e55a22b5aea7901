"""`ceres-supervisor status` reads well at 80 columns: long reasons are cut, never wrapped."""

from __future__ import annotations

from datetime import UTC, datetime

from ceres_supervisor.cli import client

NOW = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)


def node(name: str, role: str, state: str, reason: str | None, started: str | None = "2026-11-26T10:49:30Z",
         held: bool | None = True) -> dict[str, object]:
    ports = {"client": 2379, "peer": 2380, "http": 8080} if role == "meta" else {"grpc": 8831, "http": 5440, "mysql": 3307}
    return {"name": name, "role": role, "host": "127.0.0.1", "ports": ports, "state": state, "reason": reason,
            "health": {"ok": state == "healthy", "detail": None, "checked_at": None},
            "lease": None if role == "meta" else {"held": held, "shards": [0, 2, 4, 6] if held else [], "detail": None},
            "restarts": 3, "started_at": started}


DOC = {
    "cluster": {"name": "defaultCluster", "state": "degraded", "spec_hash": "603b3a56883a679c"},
    "reload": {"ok": False, "error": "cluster.toml: invalid desired state (1 problem)\n  ceresdb.lease: must be under 15s",
               "at": "2026-11-26T11:59:00Z"},
    "nodes": [
        node("meta0", "meta", "healthy", None),
        node("db0", "ceresdb", "backoff", "unhealthy: 3 failed probes: GET /: cannot connect (Connection refused) "
             "and a lot more text that would never fit on one line of a terminal", started=None, held=None),
        node("db1", "ceresdb", "lease_lost", "shards 1,3,5,7 not locked by 127.0.0.1:8832", held=False),
    ],
}


def test_every_line_fits_80_columns_and_long_reasons_are_cut() -> None:
    text = client.table(DOC, width=80, now=NOW)
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines), [len(line) for line in lines]
    assert lines[0].startswith("cluster defaultCluster: degraded")
    assert "reload FAILED" in lines[1]
    header = lines[2].split()
    # At 80 columns the reason of a node sits on an indented line under it.
    assert header == ["NAME", "ROLE", "HOST", "PORTS", "STATE", "HEALTH", "LEASE", "RESTARTS", "UPTIME"]
    db0 = lines.index(next(line for line in lines if line.startswith("db0")))
    assert "backoff" in lines[db0]
    assert lines[db0 + 1].startswith("    unhealthy: 3 failed probes") and lines[db0 + 1].endswith("...")
    meta0 = next(line for line in lines if line.startswith("meta0"))
    assert "2379/2380/8080" in meta0 and "1h10m" in meta0
    db1 = next(line for line in lines if line.startswith("db1"))
    assert " lost " in db1


def test_wide_terminals_show_the_whole_reason_in_its_column() -> None:
    lines = client.table(DOC, width=300, now=NOW).splitlines()
    assert lines[2].split()[-1] == "REASON"
    db0 = next(line for line in lines if line.startswith("db0"))
    assert db0.endswith("a lot more text that would never fit on one line of a terminal")
