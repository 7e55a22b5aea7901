"""The preflight of images (`actions/images.py`) against the in-process Docker Engine: what is
there, what `supervisor.pull = "missing"` fetches, and what a registry refuses."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ceres_supervisor.actions.images import ImageCheck
from ceres_supervisor.adapters.engine import Engine

from .fakedocker import FakeDocker

HERE = "ceresdb/ceresdb-server:v1.2.4"
PULLABLE = "ceresdb/ceresdb-server:v1.2.5"
NOWHERE = "ceresdb/ceresmeta-server:v9.9.9"


@pytest.fixture
async def docker(tmp_path: Path) -> AsyncIterator[FakeDocker]:
    fake = FakeDocker(str(tmp_path / "docker.sock"), images=(HERE,))
    fake.registry.add(PULLABLE)
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def check(docker: FakeDocker) -> AsyncIterator[ImageCheck]:
    engine = Engine("c", base_url=f"unix://{docker.socket_path}")
    yield ImageCheck(engine, lambda: None)
    engine.close()


async def test_without_pull_a_missing_image_is_named_and_nothing_is_pulled(
    docker: FakeDocker, check: ImageCheck
) -> None:
    check.want("h1", [HERE, PULLABLE], pull=False)
    result = await check.check_once()
    assert (result.spec_hash, result.missing, result.errors) == ("h1", (PULLABLE,), {})
    assert not [c for c in docker.calls if c.startswith("POST /images/create")], docker.calls


async def test_pull_missing_fetches_what_the_registry_has(docker: FakeDocker, check: ImageCheck) -> None:
    check.want("h1", [HERE, PULLABLE], pull=True)
    result = await check.check_once()
    assert result.missing == () and result.errors == {}
    assert PULLABLE in docker.images
    assert [c for c in docker.calls if c.startswith("POST /images/create")] == ["POST /images/create"]
    assert check.current == result  # what the agent publishes and the planner waits on


async def test_a_pull_the_registry_refuses_leaves_the_image_missing_with_the_reason(
    docker: FakeDocker, check: ImageCheck
) -> None:
    check.want("h2", [HERE, NOWHERE], pull=True)
    result = await check.check_once()
    assert result.missing == (NOWHERE,)
    assert result.errors[NOWHERE].startswith(
        "pull failed: pull ceresdb/ceresmeta-server:v9.9.9: pull access denied"
    )
    assert HERE not in result.errors
