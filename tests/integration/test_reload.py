"""Reload on the real engine: only what changed is touched (issue: systemd and hot reload)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from collections.abc import Callable

import aiohttp

from ceres_supervisor.surfaces import snapshot
from testkit.dockerevents import DockerEvents
from testkit.standins import IMAGE_PREFIX

from .conftest import Cluster, eventually


async def identities(cluster: Cluster) -> dict[str, tuple[str, str]]:
    """node -> (container ID, StartedAt)."""
    out = {}
    for c in await cluster.containers():
        out[c.labels["io.ceres-supervisor.node"]] = (c.id, c.attrs["State"]["StartedAt"])
    return out


async def reload(cluster: Cluster) -> snapshot.ReloadResult:
    assert cluster.supervisor is not None
    return await asyncio.wait_for(cluster.supervisor.request_reload(), 30)


async def post_reload(cluster: Cluster) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as session, session.post(f"{cluster.api_url}/v1/reload") as response:
        return response.status, await response.json()


async def test_changed_ceresdb_config_recreates_only_that_node(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster()
    await cluster.start()
    await cluster.healthy(90)
    before = await identities(cluster)
    cluster.write(
        cluster.text.replace('name = "db1"', 'name = "db1"\nconfig = { logger = { level = "debug" } }')
    )
    status, body = await post_reload(cluster)  # the API goes down the SIGHUP path
    assert (status, body["ok"]) == (200, True)
    await eventually(
        lambda: (
            cluster.record("db1").run_key is not None
            and cluster.record("db1").run_key.split("@")[0] != before["db1"][0]
        ),
        30,
        "db1 recreated",
    )
    await cluster.healthy(90)
    after = await identities(cluster)
    assert after["meta0"] == before["meta0"] and after["db0"] == before["db0"]
    assert after["db1"][0] != before["db1"][0]
    config = (cluster.root / "state" / "config" / "db1" / "ceresdb.toml").read_text()
    assert 'level = "debug"' in config


async def test_changed_meta_image_recreates_members_one_at_a_time(
    make_cluster: Callable[..., Cluster], docker_client: object
) -> None:
    cluster = make_cluster(meta=3, db=2)
    await cluster.start()
    await cluster.healthy(120)
    before = await identities(cluster)
    image = await asyncio.to_thread(docker_client.images.get, f"{IMAGE_PREFIX}/ceresmeta-server:1.2.7")  # type: ignore[attr-defined]
    await asyncio.to_thread(image.tag, f"{IMAGE_PREFIX}/ceresmeta-server", "1.2.7-retagged")
    try:
        cluster.write(
            cluster.text.replace(
                f'image = "{IMAGE_PREFIX}/ceresmeta-server:1.2.7"',
                f'image = "{IMAGE_PREFIX}/ceresmeta-server:1.2.7-retagged"',
            )
        )
        metas = ("meta0", "meta1", "meta2")
        with DockerEvents(docker_client, cluster.name) as events:  # type: ignore[arg-type]
            assert (await reload(cluster)).ok
            await eventually(
                lambda: {e.node for e in events.of(actions=("destroy",))} == set(metas),
                180,
                "all three meta members recreated",
            )
            await eventually(lambda: len(events.of(actions=("start",))) >= 3, 60, "and started again")
            most, intervals = events.most_down_at_once("meta")
        assert most == 1, f"two meta members were down at once: {intervals}"
        await cluster.healthy(120)
        after = await identities(cluster)
        assert after["db0"] == before["db0"] and after["db1"] == before["db1"]
        recreates = [e.node for e in cluster.supervisor.events if e.type == "recreate"]  # type: ignore[union-attr]
        assert sorted(recreates) == list(metas)
    finally:
        await asyncio.to_thread(
            docker_client.images.remove, f"{IMAGE_PREFIX}/ceresmeta-server:1.2.7-retagged"
        )  # type: ignore[attr-defined]


BROKEN = [
    ("syntax error", lambda text: text + "\n[supervisor\n", "TOML syntax error"),
    (
        "unknown key",
        lambda text: text.replace("[ceresdb]\n", '[ceresdb]\nleese = "5s"\n', 1),
        "ceresdb.leese: unknown key",
    ),
    (
        "missing secret",
        lambda text: (
            text + '\n[ceresdb.config.analytic.wal.obkv]\npassword = { env = "CERES_TEST_NOT_SET" }\n'
        ),
        "ceresdb.config.analytic.wal.obkv.password: environment variable 'CERES_TEST_NOT_SET' is not set",
    ),
]


async def test_broken_files_touch_nothing_and_a_later_good_reload_applies(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster()
    supervisor = await cluster.start()
    await cluster.healthy(90)
    good = cluster.text
    before = await identities(cluster)
    for name, breaks, expected in BROKEN:
        cluster.write(breaks(good))
        status, body = await post_reload(cluster)
        assert status == 422 and expected in str(body["error"]), (name, body)
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{cluster.api_url}/v1/status") as response,
        ):
            doc = await response.json()
        assert doc["reload"]["ok"] is False and expected in doc["reload"]["error"], name
        assert supervisor.loop.status_line(supervisor.snapshot.plan).startswith("healthy")  # type: ignore[union-attr]
        assert await identities(cluster) == before, name
        assert cluster.cluster_state() == "healthy"
    cluster.write(good.replace('name = "db0"', 'name = "db0"\nconfig = { logger = { level = "warn" } }'))
    status, body = await post_reload(cluster)
    assert (status, body["ok"]) == (200, True)
    await eventually(
        lambda: (
            cluster.record("db0").run_key is not None
            and cluster.record("db0").run_key.split("@")[0] != before["db0"][0]
        ),
        30,
        "db0 recreated",
    )
    assert supervisor.loop.reload_result.ok


async def test_twenty_sighups_within_a_second(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster()
    await cluster.start(handle_signals=True)
    await cluster.healthy(90)
    base = cluster.text
    levels = ["debug", "info", "warn"]
    for i in range(20):
        level = levels[i % 3]
        cluster.write(
            base.replace('name = "db1"', f'name = "db1"\nconfig = {{ logger = {{ level = "{level}" }} }}')
        )
        os.kill(os.getpid(), signal.SIGHUP)
        await asyncio.sleep(0.04)  # pacing the signals, not waiting for a condition
    final = levels[19 % 3]
    await eventually(
        lambda: (
            cluster.supervisor is not None
            and f'level = "{final}"'.encode() in cluster.supervisor.desired.node("db1").config_text
        ),
        20,
        "the last file loaded",
    )  # type: ignore[union-attr]
    await eventually(
        lambda: (
            cluster.cluster_state() == "healthy"
            and cluster.supervisor.desired.node("db1").spec_hash  # type: ignore[union-attr]
            == (cluster.supervisor.snapshot.observation.containers["db1"].spec_hash)
        ),
        90,  # type: ignore[union-attr]
        "db1 running the final spec",
    )
    names = sorted(c.name for c in await cluster.containers())
    assert names == sorted(cluster.container_name(n) for n in ("meta0", "db0", "db1"))
    assert cluster.task is not None and not cluster.task.done()
    rendered = (cluster.root / "state" / "config" / "db1" / "ceresdb.toml").read_text()
    assert f'level = "{final}"' in rendered


async def test_supervisor_settings_apply_live_without_touching_containers(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster()
    supervisor = await cluster.start()
    await cluster.healthy(90)
    before = await identities(cluster)
    cluster.write(re.sub(r'probe_interval = "1s"', 'probe_interval = "2s"', cluster.text))
    assert (await reload(cluster)).ok
    assert supervisor.spec.supervisor.probe_interval == 2.0
    assert supervisor.loop.prober is not None
    await eventually(
        lambda: supervisor.loop.prober.settings.interval_s == 2.0, 10, "the prober on the new interval"
    )  # type: ignore[union-attr]
    assert await identities(cluster) == before


async def test_static_topology_refuses_a_changed_node_set(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster()
    await cluster.start()
    await cluster.healthy(90)
    before = await identities(cluster)
    original = cluster.text
    without_db1 = original[: original.index('[[ceresdb.nodes]]\nname = "db1"')]
    cluster.write(without_db1)
    result = await reload(cluster)
    assert (
        not result.ok
        and "ceresdb.nodes: this static-topology cluster started with CeresDB nodes db0, db1"
        in (result.error or "")
    )
    moved = re.sub(r'(name = "db1"\nhost = )"127.0.0.2"', r'\1"127.0.0.3"', original)
    cluster.write(moved)
    result = await reload(cluster)
    assert not result.ok and "ceresdb.nodes[1]: db1 is 127.0.0.2:" in (result.error or "")
    assert await identities(cluster) == before


async def test_dynamic_topology_adds_and_removes_nodes_keeping_data(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster(db=2)
    cluster.text = cluster.text.replace("[meta]\n", '[meta]\ntopology = "dynamic"\n', 1)
    await cluster.start()
    await cluster.healthy(90)
    before = await identities(cluster)
    data_dir = cluster.root / "state" / "data" / "db1"
    assert data_dir.is_dir()
    cluster.write(cluster.text[: cluster.text.index('[[ceresdb.nodes]]\nname = "db1"')])
    assert (await reload(cluster)).ok
    await eventually(
        lambda: asyncio.to_thread(
            lambda: (
                "db1"
                not in {
                    c.labels["io.ceres-supervisor.node"]
                    for c in cluster.client.containers.list(
                        all=True, filters={"label": f"io.ceres-supervisor.cluster={cluster.name}"}
                    )
                }
            )
        ),
        30,
        "db1's container removed",
    )
    assert data_dir.is_dir(), "the data directory of a removed node must stay"
    after = await identities(cluster)
    assert after == {k: v for k, v in before.items() if k != "db1"}
    assert any(e.node == "db1" and e.type == "remove" for e in cluster.supervisor.events)  # type: ignore[union-attr]
    await cluster.healthy(60)
