"""The upgrade pair table and the steps of an upgrade (decisions.upgrades), table-driven."""

from __future__ import annotations

import pytest

from ceres_supervisor.cli import exits
from ceres_supervisor.cli import upgrades as upgrade_cli
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
def test_the_pair_table(
    source: str, target: str, keep: bool, meta: str | None, db: str | None, refused: str | None
) -> None:
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


def members(
    running: dict[str, str], down: tuple[str, ...] = (), unknown: tuple[str, ...] = ()
) -> list[Member]:
    return [
        Member(name, role, rel(running[name]) if name in running else None, name not in unknown, name in down)
        for name, role in META3 + DB3
    ]


def steps(upgrade: upgrades.Upgrade) -> list[tuple[tuple[str, ...], bool]]:
    return [(s.nodes, s.together) for s in upgrade.steps]


ALL_124 = dict.fromkeys(["meta0", "meta1", "meta2", "db0", "db1", "db2"], "1.2.4")


# (case, running releases, target, leader, down, expected steps)
STEPS = [
    (
        "rolling: followers, the leader, then CeresDB one at a time",
        ALL_124,
        rel("1.2.5"),
        "meta1",
        (),
        [
            (("meta0",), False),
            (("meta2",), False),
            (("meta1",), False),
            (("db0",), False),
            (("db1",), False),
            (("db2",), False),
        ],
    ),
    (
        "no leader known: file order",
        ALL_124,
        rel("1.2.5"),
        None,
        (),
        [
            (("meta0",), False),
            (("meta1",), False),
            (("meta2",), False),
            (("db0",), False),
            (("db1",), False),
            (("db2",), False),
        ],
    ),
    (
        "half way: meta done, what is left",
        {**ALL_124, "meta0": "1.2.5", "meta1": "1.2.5", "meta2": "1.2.5", "db0": "1.2.5"},
        rel("1.2.5"),
        "meta1",
        (),
        [(("db1",), False), (("db2",), False)],
    ),
    (
        "a node that is down goes first",
        ALL_124,
        rel("1.2.5"),
        "meta0",
        ("db2", "meta2"),
        [
            (("meta2",), False),
            (("meta1",), False),
            (("meta0",), False),
            (("db2",), False),
            (("db0",), False),
            (("db1",), False),
        ],
    ),
    (
        "1.2.6 -> 1.2.7: meta together, once",
        dict.fromkeys(ALL_124, "1.2.6"),
        rel("1.2.7"),
        "meta1",
        (),
        [(("meta0", "meta1", "meta2"), True), (("db0",), False), (("db1",), False), (("db2",), False)],
    ),
    (
        "1.2.7 -> 2.0.0: meta together, then every node together",
        dict.fromkeys(ALL_124, "1.2.7"),
        rel("2.0.0", True),
        "meta0",
        (),
        [(("meta0", "meta1", "meta2"), True), (("db0", "db1", "db2"), True)],
    ),
    (
        "1.2.7 -> 2.0.0 with meta done",
        {**dict.fromkeys(ALL_124, "1.2.7"), "meta0": "2.0.0", "meta1": "2.0.0", "meta2": "2.0.0"},
        rel("2.0.0", True),
        "meta0",
        (),
        [(("db0", "db1", "db2"), True)],
    ),
    (
        "a node without a container is not part of it",
        {k: v for k, v in ALL_124.items() if k != "db2"},
        rel("1.2.5"),
        "meta0",
        (),
        [(("meta1",), False), (("meta2",), False), (("meta0",), False), (("db0",), False), (("db1",), False)],
    ),
    ("nothing to do", dict.fromkeys(ALL_124, "1.2.5"), rel("1.2.5"), "meta0", (), []),
]


@pytest.mark.parametrize(
    ("running", "target", "leader", "down", "expected"),
    [case[1:] for case in STEPS],
    ids=[case[0] for case in STEPS],
)
def test_the_steps_in_order(
    running: dict[str, str],
    target: Release,
    leader: str | None,
    down: tuple[str, ...],
    expected: list[tuple[tuple[str, ...], bool]],
) -> None:
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
    assert (
        upgrade.refused is not None
        and "ceresdb 1.2.6 -> horaedb 2.0.0 skips a required step" in upgrade.refused
    )


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
    to_2x = upgrades.assess(
        rel("2.0.0", True), members({**dict.fromkeys(ALL_124, "1.2.7"), "meta0": "2.0.0"}), "meta0"
    )
    assert "no way back from 2.x through the file" in upgrades.going_back(to_2x)


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("ceresdb/ceresdb-server:v1.2.4", "ceresdb 1.2.4"),
        ("ceres-emulator/ceresmeta-server:1.2.6", "ceresdb 1.2.6"),
        ("apache/horaedb-server:v2.0.0", "horaedb 2.0.0"),
        ("registry.example:5000/apache/horaemeta-server:v2.0.0", "horaedb 2.0.0"),
        ("ceresdb/ceresdb-server:latest", None),
        ("ceresdb/ceresdb-server", None),
    ],
)
def test_the_release_an_image_reference_says(image: str, expected: str | None) -> None:
    found = release_of_image(image)
    assert (found.label() if found else None) == expected


@pytest.mark.parametrize("text", ["ceresdb", "mysql 1.2.4", "ceresdb 1.2", "", "horaedb v2.0.0 x"])
def test_a_release_label_that_is_not_one(text: str) -> None:
    assert parse_release(text) is None


# --- what `plan` and `upgrade status` print ----------------------------------------------------------


def printed(upgrade: upgrades.Upgrade, missing: list[str] | None = None) -> tuple[int, list[str]]:
    lines: list[str] = []
    code = upgrade_cli.print_plan(upgrade, missing if missing is not None else [], 120, lines.append)
    return code, lines


def test_plan_prints_the_steps_in_order_with_how_and_why() -> None:
    code, lines = printed(upgrades.assess(rel("1.2.5"), members(ALL_124), "meta0"))
    assert code == 0
    assert lines[0] == "upgrade ceresdb 1.2.4 -> ceresdb 1.2.5, in 6 steps, in this order:"
    order = [line.split()[1] for line in lines[1:7]]
    assert order == ["meta1", "meta2", "meta0", "db0", "db1", "db2"]
    assert all("one at a time" in line for line in lines[1:7])
    assert "(deduction)" in lines[1]
    text = "\n".join(lines)
    assert (
        "meta downtime: none expected" in text and "going back: to go back, set cluster.version back" in text
    )


def test_plan_says_meta_goes_together_and_its_downtime() -> None:
    code, lines = printed(
        upgrades.assess(rel("1.2.7"), members(dict.fromkeys(ALL_124, "1.2.6")), "meta0"),
        missing=["ceres-emulator/ceresdb-server:1.2.7"],
    )
    text = "\n".join(lines)
    assert code == 0
    assert "1. meta0, meta1, meta2  meta     all together   the leader key moves at 1.2.7" in text
    assert "meta downtime: meta is down from the stop of its members" in text
    assert "images: this machine lacks ceres-emulator/ceresdb-server:1.2.7: nothing stops anywhere" in text


def test_plan_refuses_an_impossible_pair_naming_the_reason(capsys: pytest.CaptureFixture[str]) -> None:
    code, lines = printed(upgrades.assess(rel("1.2.7"), members(dict.fromkeys(ALL_124, "2.0.0")), "meta0"))
    assert code == 2 and lines == []
    assert (
        "error: cluster.version: upgrade refused: horaedb 2.0.0 -> ceresdb 1.2.7: no way back"
        in capsys.readouterr().err
    )


def test_plan_without_an_upgrade_prints_nothing() -> None:
    assert printed(upgrades.assess(rel("1.2.4"), members(ALL_124), "meta0")) == (0, [])


STATUS = {
    "upgrade": {
        "state": "halted",
        "target": "ceresdb 1.2.5",
        "from": ["ceresdb 1.2.4"],
        "pending": True,
        "nodes": [
            {"name": "meta0", "release": "ceresdb 1.2.5", "done": True},
            {"name": "db0", "release": "ceresdb 1.2.5", "done": True},
            {"name": "db1", "release": "ceresdb 1.2.4", "done": False},
        ],
        "steps": [{"role": "ceresdb", "nodes": ["db1"], "together": False, "why": "x"}],
        "halted": "db0 not healthy within 30s (unhealthy: ...)",
        "going_back": "to go back, set cluster.version back to ceresdb 1.2.4 ...",
        "preflight": {"ok": True, "detail": "every machine has the images"},
        "operation": {"id": "op-1-1"},
        "note": "",
    }
}


def test_upgrade_status_says_what_is_done_where_it_stopped_and_how_to_go_back() -> None:
    text = upgrade_cli.status_text(STATUS)
    assert text.splitlines()[0] == "upgrade ceresdb 1.2.4 -> ceresdb 1.2.5: halted"
    assert "done: meta0, db0 (2 of 3 nodes)" in text
    assert "halted: db0 not healthy within 30s" in text and "going back: to go back" in text
    assert "db1  ceresdb 1.2.4  no" in text
    assert upgrade_cli.exit_code(STATUS) == exits.NOT_OK


@pytest.mark.parametrize(
    ("state", "code"),
    [
        ("none", exits.OK),
        ("done", exits.OK),
        ("waiting", exits.RUNNING),
        ("running", exits.RUNNING),
        ("refused", exits.NOT_OK),
        ("halted", exits.NOT_OK),
    ],
)
def test_upgrade_status_exit_codes(state: str, code: int) -> None:
    assert upgrade_cli.exit_code({"upgrade": {**STATUS["upgrade"], "state": state}}) == code


def test_releases_of_another_machine_come_from_a_daemon_s_document() -> None:
    assert upgrade_cli.remote_releases(STATUS) == {
        "meta0": "ceresdb 1.2.5",
        "db0": "ceresdb 1.2.5",
        "db1": "ceresdb 1.2.4",
    }
    assert upgrade_cli.remote_releases({"upgrade": None}) is None


# --- the preflight and meta as it runs ---------------------------------------------------------------

IMG = "ceres-emulator/ceresdb-server:1.2.5"


@pytest.mark.parametrize(
    ("checks", "confirmed", "said"),
    [
        (
            {"a": upgrades.Preflight("h", (IMG,)), "b": upgrades.Preflight("h", (IMG,))},
            True,
            "every machine has the images",
        ),
        (
            {"a": upgrades.Preflight("h", (IMG,)), "b": upgrades.Preflight("h", (IMG,), (IMG,))},
            False,
            f"b lacks {IMG}",
        ),
        (
            {
                "a": upgrades.Preflight("h", (IMG,)),
                "b": upgrades.Preflight("h", (IMG,), (IMG,), {IMG: "pull failed: x"}),
            },
            False,
            f"b lacks {IMG} (pull failed: x)",
        ),
        ({"a": upgrades.Preflight("h", (IMG,)), "b": None}, False, "waiting for b to check its images"),
        (
            {"a": upgrades.Preflight("h", (IMG,)), "b": upgrades.Preflight("older", (IMG,), (IMG,))},
            False,
            "waiting for b to check its images",
        ),  # a check of another file says nothing of this one
    ],
)
def test_every_machine_must_say_it_has_the_images(
    checks: dict[str, upgrades.Preflight | None], confirmed: bool, said: str
) -> None:
    assert upgrades.images_confirmed("h", checks) == (confirmed, said)


def test_a_published_preflight_is_read_back_or_ignored() -> None:
    check = upgrades.Preflight("h", (IMG,), (IMG,), {IMG: "check failed: x"}, "2026-12-07T00:00:00Z")
    assert upgrades.Preflight.parse(check.document()) == check
    assert upgrades.Preflight.parse({"spec_hash": 1}) is None and upgrades.Preflight.parse(None) is None


@pytest.mark.parametrize(
    ("running", "target", "paths", "key"),
    [
        (
            {"meta0": "ceresdb 1.2.6", "meta1": "ceresdb 1.2.6"},
            rel("1.2.7"),
            {"meta0": "/api/v1/healthCheck", "meta1": "/api/v1/healthCheck"},
            "/members/leader",
        ),
        (
            {"meta0": "ceresdb 1.2.7", "meta1": "ceresdb 1.2.6"},
            rel("1.2.7"),
            {"meta1": "/api/v1/healthCheck"},
            "/ceresdb/members/leader",
        ),  # mid-step: the file's
        ({"meta0": "ceresdb 1.2.4", "meta1": "ceresdb 1.2.4"}, rel("1.2.5"), {}, "/members/leader"),
        (
            {"meta0": "ceresdb 1.2.7", "meta1": "ceresdb 1.2.7"},
            rel("2.0.0", True),
            {},
            "/ceresdb/members/leader",
        ),
        (
            {"meta0": "horaedb 2.0.0", "meta1": "horaedb 2.0.0"},
            rel("2.0.0", True),
            {},
            "/ceresdb/members/leader",
        ),
        ({}, rel("2.0.0"), {}, "/horaedb/members/leader"),
    ],
)
def test_meta_is_probed_as_it_runs(
    running: dict[str, str], target: Release, paths: dict[str, str], key: str
) -> None:
    assert upgrades.probed_as(target, running, ["meta0", "meta1"]) == (paths, key)
