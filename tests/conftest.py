"""Session-wide fixtures for the Docker-backed tests. They fail loudly, never skip."""

from __future__ import annotations

import os
from collections.abc import Iterator

import docker
import pytest

from testkit import emulator as build
from testkit.helpers import SESSION, TEST_LABEL


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Integration and emulator tests carry the `docker` marker; unit tests run first."""
    for item in items:
        if "/integration/" in str(item.path) or "/emulator/" in str(item.path):
            item.add_marker(pytest.mark.docker)
    items.sort(key=lambda item: item.get_closest_marker("docker") is not None)


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
