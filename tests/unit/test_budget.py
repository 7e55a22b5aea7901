"""The disruption budget rule, by table: who may be stopped by choice, and who stands in the way."""

from __future__ import annotations

import pytest

from ceres_supervisor.decisions.budget import Budget, blockers, describe

HEALTHY = None
META3 = {"meta0": ("meta", HEALTHY), "meta1": ("meta", HEALTHY), "meta2": ("meta", HEALTHY)}
DB3 = {"db0": ("ceresdb", HEALTHY), "db1": ("ceresdb", HEALTHY), "db2": ("ceresdb", HEALTHY)}


def down(base: dict[str, tuple[str, str | None]], **why: str) -> dict[str, tuple[str, str | None]]:
    return {name: (role, why.get(name)) for name, (role, _w) in base.items()}


@pytest.mark.parametrize(
    ("node", "local", "budget", "expected"),
    [
        # meta: only while every other member is healthy (etcd keeps its quorum)
        ("meta0", down(META3, meta0="unhealthy"), Budget(), None),
        ("meta0", down(META3, meta0="unhealthy", meta1="unhealthy"), Budget(), ["meta1 (unhealthy)"]),
        (
            "meta2",
            down(META3, meta0="unhealthy", meta1="starting", meta2="unhealthy"),
            Budget(),
            ["meta0 (unhealthy)", "meta1 (starting)"],
        ),
        # ceresdb: fewer than max_unavailable others down or without their shards
        ("db0", down(DB3, db0="unhealthy"), Budget(), None),
        ("db0", down(DB3, db0="unhealthy", db1="starting"), Budget(), ["db1 (starting)"]),
        ("db0", down(DB3, db0="unhealthy", db1="starting"), Budget(max_unavailable=2), None),
        ("db0", down(DB3, db0="lease unknown", db1="reopening"), Budget(), ["db1 (reopening)"]),
        (
            "db0",
            down(DB3, db1="reopening", db2="lease_lost"),
            Budget(max_unavailable=2),
            ["db1 (reopening)", "db2 (lease_lost)"],
        ),
        # down themselves and each waiting for a stop: the first by name goes, the others wait for it
        ("db0", down(DB3, db0="unhealthy", db1="unhealthy", db2="lease_lost"), Budget(), None),
        ("db1", down(DB3, db0="unhealthy", db1="unhealthy"), Budget(), ["db0 (unhealthy)"]),
        ("db1", down(DB3, db0="stopping", db1="unhealthy", db2="unhealthy"), Budget(), ["db0 (stopping)"]),
        ("db1", down(DB3, db0="not running", db1="unhealthy"), Budget(), ["db0 (not running)"]),  # crashed
        # ... and a node waiting for meta to reopen its shards does not hold them back: up to 1.2.7 an
        # offline assigned node (a paused or hung db0) stops every reopen, so db1 waits for db0
        ("db0", down(DB3, db0="unhealthy", db1="reopening"), Budget(), None),
        ("db0", down(DB3, db0="lease_lost"), Budget(peers={"db4": ("ceresdb", "without its shards")}), None),
        ("db2", down(DB3, db0="reopening", db1="unhealthy", db2="unhealthy"), Budget(), ["db1 (unhealthy)"]),
        ("db0", down(DB3, db1="reopening"), Budget(), ["db1 (reopening)"]),  # db0 holds its shards: strict
        ("db0", down(DB3, db1="unhealthy"), Budget(), ["db1 (unhealthy)"]),  # db0 itself holds its shards
        ("db0", down(DB3, db0="unhealthy"), Budget(peers={"db4": ("ceresdb", "unhealthy")}), None),
        (
            "db4",
            down(DB3, db0="unhealthy"),
            Budget(peers={"db4": ("ceresdb", "unhealthy")}),
            ["db0 (unhealthy)"],
        ),
        # meta keeps the strict rule: a member that is down may still be in etcd's quorum
        ("meta0", down(META3, meta0="unhealthy", meta1="unhealthy"), Budget(), ["meta1 (unhealthy)"]),
        # roles are budgeted apart: a meta member down does not hold back a CeresDB stop
        ("db0", {**down(META3, meta1="unhealthy"), **down(DB3, db0="unhealthy")}, Budget(), None),
        # another machine's nodes, as their agents published them
        ("db0", down(DB3), Budget(peers={"db9": ("ceresdb", "agent down")}), ["db9 (agent down)"]),
        ("db0", down(DB3), Budget(peers={"db9": ("ceresdb", HEALTHY)}), None),
        # a slot held for a node that is healthy again but not released yet still counts
        ("db0", down(DB3), Budget(slots={"db1": "127.0.0.2"}), ["db1 (slot held by 127.0.0.2)"]),
        ("db0", down(DB3, db1="stopping"), Budget(slots={"db1": "127.0.0.2"}), ["db1 (stopping)"]),
        ("db0", down(DB3), Budget(slots={"db0": "127.0.0.1"}), None),  # its own slot
        # another agent stopped db4 before db0 was published down: its slot blocks, whatever the order
        (
            "db0",
            down(DB3, db0="unhealthy"),
            Budget(peers={"db4": ("ceresdb", "unhealthy")}, slots={"db4": "127.0.0.3"}),
            ["db4 (unhealthy)"],
        ),
        # ... but once it only waits for its shards, its slot does not hold a node down itself back
        # (up to 1.2.7 its shards may wait for that very node)
        ("db0", down(DB3, db0="unhealthy", db1="reopening"), Budget(slots={"db1": "127.0.0.2"}), None),
        ("db0", down(DB3, db1="reopening"), Budget(slots={"db1": "127.0.0.2"}), ["db1 (reopening)"]),
        # ... and once its node was started again since (the stop it was taken for is over), a node
        # down again by itself waits its turn by name like any other: else db4 (lease_lost after its
        # restart, its slot held until it holds shards) and db0 (unhealthy, first by name) would
        # wait for each other for ever (a 10-minute chaos run ended so)
        (
            "db0",
            down(DB3, db0="unhealthy"),
            Budget(
                peers={"db4": ("ceresdb", "lease_lost"), "db5": ("ceresdb", "lease_lost")},
                slots={"db4": "127.0.0.3", "db5": "127.0.0.3"},
                settled=frozenset({"db4", "db5"}),
            ),
            None,
        ),
        (
            "db4",
            down(DB3, db0="unhealthy"),
            Budget(
                peers={"db4": ("ceresdb", "lease_lost")},
                slots={"db4": "127.0.0.3"},
                settled=frozenset({"db4"}),
            ),
            ["db0 (unhealthy)"],
        ),
        (
            "db0",
            down(DB3),
            Budget(
                peers={"db4": ("ceresdb", "lease_lost")},
                slots={"db4": "127.0.0.3"},
                settled=frozenset({"db4"}),
            ),
            ["db4 (lease_lost)"],
        ),
        # several machines and the store unreachable: no stop by choice at all
        ("db0", down(DB3), Budget(coordinated=True, available=False), ["coordination unavailable"]),
        ("db0", down(DB3), Budget(coordinated=False, available=False), None),
    ],
)
def test_blockers(
    node: str, local: dict[str, tuple[str, str | None]], budget: Budget, expected: list[str] | None
) -> None:
    role = "meta" if node.startswith("meta") else "ceresdb"
    assert blockers(node, role, local, budget) == expected


def test_describe_names_who_is_down() -> None:
    assert describe(["db1 (reopening)"]) == "waiting for disruption budget: db1 (reopening)"
