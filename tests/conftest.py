"""Session-wide fixtures for the Docker-backed tests. They fail loudly, never skip."""

from __future__ import annotations

import os
from collections.abc import Iterator

import docker
import pytest

from testkit import emulator as build
from testkit.helpers import SESSION, TEST_LABEL

LONGEST_FIRST = (
    "integration/test_cluster.py",  # one group of ~4 min on one worker: three machines, then each fault
    "integration/test_upgrades.py",
    "integration/test_chaos.py",
    "integration/test_testkit.py",
    "integration/test_backups.py",
    "integration/test_cli.py",
    "emulator/test_emulator.py",
)
"""Modules whose tests (or groups) take longest, started first so that no worker ends the run alone
on one of them; the rest follow in collection order. Measured with `--durations` (README)."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Integration and emulator tests carry the `docker` marker; unit tests run first, then the
    longest Docker-backed modules."""
    for item in items:
        if "/integration/" in str(item.path) or "/emulator/" in str(item.path):
            item.add_marker(pytest.mark.docker)

    def rank(item: pytest.Item) -> tuple[bool, int]:
        path = item.path.as_posix()
        first = next((i for i, name in enumerate(LONGEST_FIRST) if path.endswith(name)), len(LONGEST_FIRST))
        return item.get_closest_marker("docker") is not None, first

    items.sort(key=rank)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Keep each phase's report on the item, so fixtures can tell a failed test at teardown."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


def failed(request: pytest.FixtureRequest) -> bool:
    report = getattr(request.node, "report_call", None)
    return report is None or report.failed


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    try:
        client = docker.from_env(timeout=60)
        client.ping()
    except docker.errors.DockerException as err:
        pytest.fail(f"no Docker Engine answers ({err}); run `make test`, which starts one", pytrace=False)
    build.main(os.environ.get("CERES_EMULATOR_VERSIONS", "1.2.2 1.2.4 1.2.5 1.2.6 1.2.7 2.0.0").split())
    yield client
    for container in client.containers.list(all=True, filters={"label": TEST_LABEL}):
        if container.labels.get(TEST_LABEL, "").startswith(SESSION):
            container.remove(force=True)
    client.close()
