"""The upgrade pair table and the steps of an upgrade (decisions.upgrades), table-driven."""

from __future__ import annotations

import pytest

from ceres_supervisor.decisions import upgrades
from ceres_supervisor.decisions.upgrades import Member
from ceres_supervisor.model.versions import Release, parse_release, release_of_image


def rel(text: str, keep: bool = False) -> Release:
    flavor = "horaedb" if text.startswith("2") else "ceresdb"
    parsed = parse_release(f"{flavor} {text}")
    assert parsed is not None
    return Release(parsed.flavor, parsed.version, keep)


# (source, target, keep_ceresdb_data, meta mode, CeresDB mode, refusal fragment)
PAIRS = [
    ("1.2.4", "1.2.5", False, "rolling", "rolling", None),
    ("1.2.2", "1.2.6", False, "rolling", "rolling", None),
    ("1.2.5", "1.2.4", False, "rolling", "rolling", None),  # the way back: the same path
    ("1.2.6", "1.2.7", False, "together", "rolling", None),
    ("1.2.2", "1.2.7", False, "together", "rolling", None),
    ("1.2.7", "1.2.6", False, "together", "rolling", None),  # back over the moved leader key
    ("1.2.7", "2.0.0", True, "together", "together", None),
    ("1.2.7", "2.0.0", False, None, None, "needs cluster.keep_ceresdb_data = true"),
    ("1.2.6", "2.0.0", True, None, None, "skips a required step: upgrade to ceresdb 1.2.7 first"),
    ("1.2.2", "2.0.0", True, None, None, "skips a required step"),
    ("2.0.0", "1.2.7", False, None, None, "no way back from HoraeDB 2.x to CeresDB 1.x"),
    ("1.2.5", "1.2.5", False, None, None, None),
]


@pytest.mark.parametrize(("source", "target", "keep", "meta", "db", "refused"), PAIRS)
def test_the_pair_table(source: str, target: str, keep: bool, meta: str | None, db: str | None,
                        refused: str | None) -> None:
    verdict = upgrades.pair(rel(source), rel(target, keep))
    assert (verdict.meta, verdict.ceresdb) == (meta, db)
    if refused is None:
        assert verdict.refused is None
    else:
        assert verdict.refused is not None and refused in verdict.refused


def test_the_reasons_name_what_differs() -> None:
    assert "leader key moves" in upgrades.pair(rel("1.2.6"), rel("1.2.7")).meta_why
    assert "deduction" in upgrades.pair(rel("1.2.4"), rel("1.2.5")).ceresdb_why
    assert "MetaRpcService" in upgrades.pair(rel("1.2.7"), rel("2.0.0", True)).meta_why


META3 = [("meta0", "meta"), ("meta1", "meta"), ("meta2", "meta")]
DB3 = [("db0", "ceresdb"), ("db1", "ceresdb"), ("db2", "ceresdb")]


def members(running: dict[str, str], down: tuple[str, ...] = (), unknown: tuple[str, ...] = ()) -> list[Member]:
    return [Member(name, role, rel(running[name]) if name in running else None, name not in unknown, name in down)
            for name, role in META3 + DB3]


def steps(upgrade: upgrades.Upgrade) -> list[tuple[tuple[str, ...], bool]]:
    return [(s.nodes, s.together) for s in upgrade.steps]


ALL_124 = dict.fromkeys(["meta0", "meta1", "meta2", "db0", "db1", "db2"], "1.2.4")


# (case, running releases, target, leader, down, expected steps)
STEPS = [
    ("rolling: followers, the leader, then CeresDB one at a time", ALL_124, rel("1.2.5"), "meta1", (),
     [(("meta0",), False), (("meta2",), False), (("meta1",), False),
      (("db0",), False), (("db1",), False), (("db2",), False)]),
    ("no leader known: file order", ALL_124, rel("1.2.5"), None, (),
     [(("meta0",), False), (("meta1",), False), (("meta2",), False),
      (("db0",), False), (("db1",), False), (("db2",), False)]),
    ("half way: meta done, what is left", {**ALL_124, "meta0": "1.2.5", "meta1": "1.2.5", "meta2": "1.2.5",
                                           "db0": "1.2.5"}, rel("1.2.5"), "meta1", (),
     [(("db1",), False), (("db2",), False)]),
    ("a node that is down goes first", ALL_124, rel("1.2.5"), "meta0", ("db2", "meta2"),
     [(("meta2",), False), (("meta1",), False), (("meta0",), False),
      (("db2",), False), (("db0",), False), (("db1",), False)]),
    ("1.2.6 -> 1.2.7: meta together, once", dict.fromkeys(ALL_124, "1.2.6"), rel("1.2.7"), "meta1", (),
     [(("meta0", "meta1", "meta2"), True), (("db0",), False), (("db1",), False), (("db2",), False)]),
    ("1.2.7 -> 2.0.0: meta together, then every node together", dict.fromkeys(ALL_124, "1.2.7"),
     rel("2.0.0", True), "meta0", (), [(("meta0", "meta1", "meta2"), True), (("db0", "db1", "db2"), True)]),
    ("1.2.7 -> 2.0.0 with meta done", {**dict.fromkeys(ALL_124, "1.2.7"), "meta0": "2.0.0", "meta1": "2.0.0",
                                       "meta2": "2.0.0"}, rel("2.0.0", True), "meta0", (),
     [(("db0", "db1", "db2"), True)]),
    ("a node without a container is not part of it", {k: v for k, v in ALL_124.items() if k != "db2"},
     rel("1.2.5"), "meta0", (),
     [(("meta1",), False), (("meta2",), False), (("meta0",), False), (("db0",), False), (("db1",), False)]),
    ("nothing to do", dict.fromkeys(ALL_124, "1.2.5"), rel("1.2.5"), "meta0", (), []),
]


@pytest.mark.parametrize(("running", "target", "leader", "down", "expected"),
                         [case[1:] for case in STEPS], ids=[case[0] for case in STEPS])
def test_the_steps_in_order(running: dict[str, str], target: Release, leader: str | None,
                            down: tuple[str, ...], expected: list[tuple[tuple[str, ...], bool]]) -> None:
    upgrade = upgrades.assess(target, members(running, down), leader)
    assert upgrade.refused is None
    assert steps(upgrade) == expected
    assert upgrade.pending == bool(expected)
    assert set(upgrade.done) == {n for n, v in running.items() if rel(v).same_servers(target)}


def test_a_refused_pair_has_no_steps_and_says_why() -> None:
    upgrade = upgrades.assess(rel("1.2.7"), members(dict.fromkeys(ALL_124, "2.0.0")), "meta0")
    assert upgrade.pending and not upgrade.steps
    assert upgrade.refused is not None and "no way back" in upgrade.refused


def test_mixed_sources_each_pair_must_hold() -> None:
    """Meta already at 1.2.7 and CeresDB at 1.2.6 going to 2.0.0: 1.2.6 skips a step."""
    running = {**dict.fromkeys(ALL_124, "1.2.6"), "meta0": "1.2.7", "meta1": "1.2.7", "meta2": "1.2.7"}
    upgrade = upgrades.assess(rel("2.0.0", True), members(running), "meta0")
    assert upgrade.refused is not None and "ceresdb 1.2.6 -> horaedb 2.0.0 skips a required step" in upgrade.refused


def test_meta_downtime_is_said() -> None:
    rolling = upgrades.assess(rel("1.2.5"), members(ALL_124), "meta0")
    together = upgrades.assess(rel("1.2.7"), members(dict.fromkeys(ALL_124, "1.2.6")), "meta0")
    assert rolling.meta_downtime.startswith("none expected")
    assert "CeresDB nodes are `blocked` meanwhile" in together.meta_downtime


def test_unknown_nodes_are_listed() -> None:
    upgrade = upgrades.assess(rel("1.2.5"), members(ALL_124, unknown=("db2",)), "meta0")
    assert upgrade.unknown == ("db2",) and "db2" not in {n for s in upgrade.steps for n in s.nodes}


def test_going_back_is_the_same_path_except_from_2x() -> None:
    halted = upgrades.assess(rel("1.2.5"), members({**ALL_124, "meta0": "1.2.5"}), "meta0")
    assert "set cluster.version back to ceresdb 1.2.4" in upgrades.going_back(halted)
    to_2x = upgrades.assess(rel("2.0.0", True), members({**dict.fromkeys(ALL_124, "1.2.7"), "meta0": "2.0.0"}), "meta0")
    assert "no way back from 2.x through the file" in upgrades.going_back(to_2x)


@pytest.mark.parametrize(("image", "expected"), [
    ("ceresdb/ceresdb-server:v1.2.4", "ceresdb 1.2.4"),
    ("ceres-emulator/ceresmeta-server:1.2.6", "ceresdb 1.2.6"),
    ("apache/horaedb-server:v2.0.0", "horaedb 2.0.0"),
    ("registry.example:5000/apache/horaemeta-server:v2.0.0", "horaedb 2.0.0"),
    ("ceresdb/ceresdb-server:latest", None),
    ("ceresdb/ceresdb-server", None),
])
def test_the_release_an_image_reference_says(image: str, expected: str | None) -> None:
    found = release_of_image(image)
    assert (found.label() if found else None) == expected


@pytest.mark.parametrize("text", ["ceresdb", "mysql 1.2.4", "ceresdb 1.2", "", "horaedb v2.0.0 x"])
def test_a_release_label_that_is_not_one(text: str) -> None:
    assert parse_release(text) is None
