"""Every command and its exit codes, against a real daemon; the unix-socket API; secrets on every
surface an operator or a log reader sees."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

import docker

from ceres_supervisor import __version__
from testkit.helpers import free_ports, wait_until

from .conftest import Cluster, Daemon, eventually

SECRET = "s3cr3t-value-that-never-shows"


def run(*args: str) -> tuple[int, str, str]:
    """The CLI in a process of its own (it runs its own event loop; the test's runs the daemon)."""
    result = subprocess.run(
        [sys.executable, "-m", "ceres_supervisor", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return result.returncode, result.stdout, result.stderr


async def arun(*args: str) -> tuple[int, str, str]:
    return await asyncio.to_thread(run, *args)


def test_version_names_python_and_the_docker_sdk() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ceres_supervisor", "--version"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0
    assert (
        result.stdout.startswith(f"ceres-supervisor {__version__} (Python 3.")
        and "Docker SDK 7." in result.stdout
    )


async def test_every_command_and_its_exit_codes(
    make_cluster: Callable[..., Cluster],
    tmp_path: Path,
    daemons: list[Daemon],
    docker_client: docker.DockerClient,
) -> None:
    token = tmp_path / "token"
    token.write_text("cli-token\n")
    port = free_ports(1)[0]
    cluster = make_cluster(
        version="1.2.7", supervisor={"listen": f"0.0.0.0:{port}", "token_file": str(token)}
    )
    cluster.write()
    config = str(cluster.path)
    url = f"http://127.0.0.1:{port}"
    daemon = Daemon(cluster.path, tmp_path / "d.log").start()
    daemons.append(daemon)
    await asyncio.to_thread(
        wait_until, lambda: run("status", "-c", config)[0] == 0, 150, "status exit 0 (healthy)"
    )

    # Exit 0 and the JSON judged on one answer: on a loaded machine the state may move between two.
    code, out, _err = await asyncio.to_thread(
        wait_until,
        lambda: (answer := run("status", "-c", config, "--json"))[0] == 0 and answer,
        60,
        "status --json exit 0",
    )
    doc = json.loads(out)
    assert doc["cluster"]["state"] == "healthy" and len(doc["nodes"]) == 3 and "agents" in doc, doc
    code, out, _err = await arun("status", "-c", config, "--local", "--json")
    assert code == 0 and set(json.loads(out)) >= {"cluster", "reload", "nodes", "engine", "meta"}
    assert (await arun("status", "--url", url))[0] == 4  # no token: refused
    assert (await arun("status", "--url", url, "--token-file", str(token)))[0] == 0
    assert (await arun("status", "--url", f"http://127.0.0.1:{free_ports(1)[0]}"))[0] == 3  # nobody answers

    # plan: what run would change, without doing it.
    code, out, _err = await arun("plan", "-c", config)
    assert code == 0 and "running, spec matches: left alone" in out and "A daemon is running" in out
    good = cluster.text
    cluster.write(good.replace('name = "db1"', 'name = "db1"\nconfig = { logger = { level = "debug" } }'))
    code, out, _err = await arun("plan", "-c", config)
    db1_line = next(line for line in out.splitlines() if line.startswith("db1"))
    assert code == 0 and "recreate" in db1_line and "spec changed" in db1_line, out
    # reload: applied (0), refused (2, the daemon keeps its last good state), refused token (4).
    assert (await arun("reload", "-c", config))[0] == 0
    cluster.write("bogus = 1\n" + good)
    code, _out, err = await arun("reload", "-c", config)
    assert code == 2 and "bogus: unknown key" in err
    cluster.write(good)
    assert (await arun("reload", "--url", url))[0] == 4
    assert (await arun("reload", "--url", f"http://127.0.0.1:{free_ports(1)[0]}"))[0] == 3
    # pause/resume: several nodes at once, or none when one is unknown (exit 5); a paused node
    # cannot be restarted (exit 6, conflict); every --json parses.
    code, _out, err = await arun("pause", "db0", "db9", "-c", config)
    assert code == 5 and err.startswith(
        "error: unknown node 'db9': nothing was changed; the nodes of the file:"
    )
    code, out, _err = await arun("status", "-c", config, "--json")
    assert not json.loads(out)["paused"]["nodes"]
    code, out, _err = await arun("pause", "db0", "db1", "-c", config, "--json")
    assert code == 0 and json.loads(out)["nodes"] == ["db0", "db1"]
    code, _out, err = await arun("restart", "db0", "-c", config)
    assert code == 6 and err.startswith("error: db0 is paused: resume it first"), err
    code, out, _err = await arun("resume", "db0", "db1", "-c", config, "--json")
    assert code == 0 and json.loads(out)["resumed"] is True
    code, out, _err = await arun("events", "-c", config, "--json", "--node", "db0")
    types = [json.loads(line)["type"] for line in out.splitlines()]
    assert code == 0 and "paused" in types and "resumed" in types and "state" in types, types
    code, out, _err = await arun("describe", "db0", "-c", config, "--json")
    described = json.loads(out)
    assert code == 0 and described["container"]["name"] == f"ceres-{cluster.name}-db0"
    assert described["config_path"] == str(cluster.root / "state" / "config" / "db0" / "ceresdb.toml")
    code, out, _err = await arun("logs", "db0", "-c", config, "--json", "-n", "3")
    assert code == 0 and 1 <= len([json.loads(line) for line in out.splitlines()]) <= 3
    code, out, _err = await arun("plan", "-c", config, "--json")
    assert code == 0 and json.loads(out)["daemon_running"] is True
    # down refuses while the daemon answers (exit 6); once it is stopped, it removes the containers, keeps data.
    code, _out, err = await arun("down", "-c", config)
    assert code == 6 and "a ceres-supervisor daemon answers" in err
    daemon.stop()
    code, out, _err = await arun("down", "-c", config, "--json")
    assert code == 0 and json.loads(out)["removed"] is True
    assert await cluster.containers() == []
    assert (cluster.root / "state" / "data" / "db0").is_dir()
    code, _out, err = await arun("plan", "-c", config, "--docker-url", f"unix://{tmp_path}/none.sock")
    assert code == 3 and err.count("\n") == 1 and "Docker Engine unavailable" in err, err


async def test_the_api_on_a_unix_socket(
    make_cluster: Callable[..., Cluster], tmp_path: Path, daemons: list[Daemon]
) -> None:
    """No Docker is needed to test the socket: the API answers while the engine is away."""
    sock = tmp_path / "run" / "api.sock"
    cluster = make_cluster(supervisor={"listen": f"unix:{sock}"})
    cluster.write()
    daemon = Daemon(
        cluster.path, tmp_path / "d.log", env={"DOCKER_HOST": f"unix://{tmp_path}/none.sock"}
    ).start()
    daemons.append(daemon)
    await asyncio.to_thread(wait_until, sock.exists, 30, "the socket")
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o660
    code, out, _err = await arun("status", "--socket", str(sock), "--local")
    assert code == 1 and "docker engine:" in out  # unknown: the engine cannot be observed
    code, out, _err = await arun(
        "status", "-c", str(cluster.path), "--local", "--json"
    )  # listen read from the file
    assert code == 1 and json.loads(out)["cluster"]["state"] == "unknown"
    daemon.stop()
    assert not sock.exists() or (await arun("status", "--socket", str(sock)))[0] == 3


async def test_a_secret_never_shows_on_any_surface(
    make_cluster: Callable[..., Cluster],
    tmp_path: Path,
    daemons: list[Daemon],
    docker_client: docker.DockerClient,
) -> None:
    secret_file = tmp_path / "key"
    secret_file.write_text(SECRET + "\n")
    store = (
        f'\n[ceresdb.object_store]\ntype = "Aliyun"\nkey_id = "id"\nkey_secret = {{ file = "{secret_file}" }}\n'
        'endpoint = "http://oss.invalid"\nbucket = "b"\nprefix = "p"\n'
    )
    cluster = make_cluster(extra=store)
    cluster.write()
    daemon = Daemon(cluster.path, tmp_path / "d.log").start()
    daemons.append(daemon)
    await asyncio.to_thread(wait_until, lambda: daemon.get("/readyz")[0] == 200, 150, "healthy")
    surfaces = {
        "status --json": (await arun("status", "--url", daemon.url, "--json"))[1],
        "status --local --json": (await arun("status", "--url", daemon.url, "--local", "--json"))[1],
        "plan": "".join((await arun("plan", "-c", str(cluster.path)))[1:]),
        "validate": "".join((await arun("validate", "-c", str(cluster.path)))[1:]),
        "/v1/events": json.dumps(daemon.get("/v1/events?limit=1000")[1]),
        "events --json": (await arun("events", "--url", daemon.url, "--json", "-n", "1000"))[1],
        "describe db0 --json": (await arun("describe", "db0", "--url", daemon.url, "--json"))[1],
        "/v1/cluster": json.dumps(daemon.get("/v1/cluster")[1]),
        "/metrics": http_json_text(daemon.url + "/metrics"),
        "/": http_json_text(daemon.url + "/"),
    }
    await eventually(daemon.log.read_text, 5, "a log")
    surfaces["daemon log"] = daemon.log.read_text()
    for c in await cluster.containers():
        await asyncio.to_thread(c.reload)
        surfaces[f"docker inspect {c.name} labels"] = json.dumps(c.attrs["Config"]["Labels"])
        surfaces[f"docker inspect {c.name} env"] = json.dumps(c.attrs["Config"]["Env"])
    for where, text in surfaces.items():
        assert text, where
        assert SECRET not in text, f"the secret shows in {where}"
    rendered = cluster.root / "state" / "config" / "db0" / "ceresdb.toml"
    assert SECRET in rendered.read_text() and stat.S_IMODE(rendered.stat().st_mode) == 0o600


def http_json_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()
