"""`ceres-supervisor` through `commands.main(argv)`: argument parsing and the exit codes of the pure
commands (validate, render, completion, nodes), and of the commands that talk to a daemon, against
the real API served from a thread (its own event loop) over the FakeDaemon of tests/unit/scenes.py,
on a unix socket. Exit codes are the README's table."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from ceres_supervisor.cli import client, commands
from ceres_supervisor.cli.exits import Failure
from ceres_supervisor.surfaces import api
from ceres_supervisor.surfaces.snapshot import ReloadResult

from .conftest import BASE
from .scenes import META3, FakeDaemon, build, coordination, healthy, snapshot


def run(*argv: str) -> tuple[int, str, str]:
    """The command's exit code, stdout and stderr; without the log lines of the daemon the test runs
    in this same process (a real one writes them to its own journal)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = commands.main(list(argv))

    def printed(text: str) -> str:
        return "".join(line for line in text.splitlines(keepends=True) if not line.startswith('{"'))

    return code, printed(out.getvalue()), printed(err.getvalue())


# --- the pure commands ----------------------------------------------------------------------------------


def test_validate_says_valid_with_what_it_read(write: Callable[..., Path]) -> None:
    code, out, err = run("validate", "-c", str(write(BASE)))
    assert code == 0 and err == ""
    assert out.endswith("valid (ceresdb 1.2.2, cluster defaultCluster, 1 meta + 2 CeresDB nodes)\n")


def test_validate_an_invalid_file_is_2_with_the_key_path(write: Callable[..., Path]) -> None:
    code, out, err = run("validate", "-c", str(write(BASE.replace("mysql_port = 3308", "mysql_port = 0"))))
    assert (code, out) == (2, "")
    assert "invalid desired state (1 problem)" in err and "ceresdb.nodes[1].mysql_port" in err


def test_validate_a_missing_file_is_66(tmp_path: Path) -> None:
    code, out, err = run("validate", "-c", str(tmp_path / "nope.toml"))
    assert (code, out) == (66, "")
    assert (
        err
        == f"error: cannot read {tmp_path}/nope.toml: no such file (give the desired-state file with -c FILE)\n"
    )


def test_render_writes_each_node_s_files(write: Callable[..., Path], tmp_path: Path) -> None:
    code, out, _err = run("render", "-c", str(write(BASE)), "-o", str(tmp_path / "out"))
    assert code == 0
    written = sorted(Path(line).relative_to(tmp_path / "out").as_posix() for line in out.splitlines())
    assert written == [
        "db0/ceresdb.toml",
        "db0/env",
        "db1/ceresdb.toml",
        "db1/env",
        "meta0/ceresmeta.toml",
        "meta0/env",
    ]


def test_render_into_a_path_that_cannot_be_a_directory_is_70(
    write: Callable[..., Path], tmp_path: Path
) -> None:
    (tmp_path / "file").write_text("not a directory")
    code, out, err = run("render", "-c", str(write(BASE)), "-o", str(tmp_path / "file"))
    assert (code, out) == (70, "") and err.startswith("error: ")


def test_completion_prints_a_bash_script() -> None:
    code, out, _err = run("completion", "bash")
    assert code == 0 and "complete -F" in out and "rolling-restart" in out


def test_completion_nodes_lists_the_file_s_node_names_leniently(
    write: Callable[..., Path], tmp_path: Path
) -> None:
    """What the completion script asks: a file it cannot read gives no names and no error (the
    script runs it at each TAB)."""
    secret = BASE + '\n[ceresdb.config.analytic.wal]\nobkv = { password = { env = "SURELY_UNSET" } }\n'
    assert run("completion", "nodes", "-c", str(write(secret))) == (0, "meta0\ndb0\ndb1\n", "")
    odd = write('meta = 1\nceresdb = { nodes = [1, { name = 2 }, { name = "x" }] }\n')
    assert run("completion", "nodes", "-c", str(odd)) == (0, "x\n", "")
    assert run("completion", "nodes", "-c", str(tmp_path / "missing.toml")) == (0, "", "")
    assert run("completion", "nodes", "-c", str(write("[[["))) == (0, "", "")


def test_version_names_python_and_the_docker_sdk() -> None:
    code, out, _err = run("--version")
    assert code == 0 and out.startswith("ceres-supervisor ") and "Python 3." in out and "Docker SDK " in out


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        ([], "the following arguments are required: COMMAND (see ceres-supervisor --help)"),
        (["frobnicate"], "unknown command 'frobnicate'; the commands: validate, render, run, plan, down, status, "
         "reload, pause, resume, restart, rolling-restart, events, logs, describe, backup, restore, upgrade, version, "
         "completion (see ceres-supervisor --help)"),
        (["validate", "--frobnicate"], "unrecognized arguments: --frobnicate (see ceres-supervisor --help)"),
        (["render", "-c", "x.toml"], "the following arguments are required: -o/--output (see ceres-supervisor render --help)"),
        (["status", "--url", "ftp://x"], "--url 'ftp://x' is not the API's base URL, like http://127.0.0.1:5480"),
        (["rolling-restart", "--role", "leader"], "argument --role: invalid choice: 'leader' (choose from 'meta', "
         "'ceresdb') (see ceres-supervisor rolling-restart --help)"),
        (["restart"], "the following arguments are required: NODE (see ceres-supervisor restart --help)"),
        (["completion", "zsh"], "argument shell: invalid choice: 'zsh' (choose from 'bash', 'nodes') "
         "(see ceres-supervisor completion --help)"),
        (["run", "-c", "x.toml", "--log-level", "loud"], "argument --log-level: invalid choice: 'loud' (choose from "
         "'debug', 'error', 'info', 'warning') (see ceres-supervisor run --help)"),
    ],
)  # fmt: skip
def test_a_usage_error_is_64_in_one_line(argv: list[str], said: str) -> None:
    code, out, err = run(*argv)
    assert (code, out, err) == (64, "", f"error: {said}\n")


@pytest.mark.parametrize("verb", ["pause", "resume"])
@pytest.mark.parametrize("argv", [[], ["db0", "--all"]])
def test_pause_and_resume_need_nodes_or_all_but_not_both(verb: str, argv: list[str]) -> None:
    code, _out, err = run(verb, "--socket", "/nonexistent", *argv)
    assert code == 64 and err == f"error: name the nodes to {verb}, or give --all\n"


# --- against a daemon ------------------------------------------------------------------------------------


class Served:
    """The API over a FakeDaemon, served from a thread with its own event loop, on a unix socket."""

    def __init__(self, tmp_path: Path, token: str | None) -> None:
        self.socket = str(tmp_path / "api.sock")
        self.tmp_path = tmp_path
        self.token = token
        self.loop = asyncio.new_event_loop()
        self.daemon: FakeDaemon
        self.runner: web.AppRunner
        ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self.thread.start()
        assert ready.wait(10), "the API did not start"

    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)

        async def start() -> None:
            desired = build(self.tmp_path, META3)
            obs, plan = healthy(desired)
            self.daemon = FakeDaemon(
                snapshot(desired, obs, plan, loop_at=time.monotonic()), self.tmp_path / "state"
            )
            self.runner = web.AppRunner(api.Api(self.daemon, self.token).application())
            await self.runner.setup()
            await web.UnixSite(self.runner, self.socket).start()

        self.loop.run_until_complete(start())
        ready.set()
        self.loop.run_forever()

    def do(self, fn: Callable[[FakeDaemon], Any]) -> Any:
        """Run `fn(daemon)` on the server's loop (a coroutine is awaited there)."""

        async def call() -> Any:
            result = fn(self.daemon)
            return await result if asyncio.iscoroutine(result) else result

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(10)

    def close(self) -> None:
        async def stop() -> None:
            await self.daemon.close()
            await self.runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    made: list[Served] = []

    def make(token: str | None = None) -> Served:
        made.append(Served(tmp_path, token))
        return made[-1]

    yield make
    for one in made:
        one.close()


def cli(one: Served, *argv: str) -> tuple[int, str, str]:
    command, rest = argv[0], argv[1:]
    return run(command, "--socket", one.socket, *rest)


def test_status_prints_the_whole_cluster_and_is_0_when_healthy(served: Callable[..., Served]) -> None:
    one = served()
    one.do(lambda d: setattr(d, "snapshot", replace(d.snapshot, coordination=coordination())))
    code, out, err = cli(one, "status")
    assert (code, err) == (0, "")
    assert out.splitlines()[0].startswith("cluster defaultCluster: healthy")
    assert "NAME" in out and "meta2" in out and "coordination unavailable" not in out
    code, out, _ = cli(one, "status", "--json")
    assert code == 0 and json.loads(out)["cluster"]["state"] == "healthy" and "agents" in json.loads(out)


def test_status_falls_back_to_the_local_view_while_the_store_is_away_and_is_1(
    served: Callable[..., Served],
) -> None:
    one = served()  # the daemon's store: not connected yet
    code, out, _err = cli(one, "status")
    assert code == 1
    assert out.splitlines()[1] == (
        "coordination unavailable (not connected yet): other machines' nodes are shown as this supervisor last knew them"
    )
    code, out, _err = cli(one, "status", "--local", "--json")
    assert code == 0 and set(json.loads(out)) >= {"cluster", "reload", "engine", "nodes"}


def test_status_of_a_degraded_cluster_is_1(served: Callable[..., Served]) -> None:
    one = served()
    one.do(lambda d: setattr(d, "snapshot", replace(d.snapshot, engine_error="no socket")))
    code, out, _err = cli(one, "status", "--local")
    assert code == 1 and "docker engine: no socket" in out


def test_status_without_the_token_is_4_and_with_it_0(served: Callable[..., Served], tmp_path: Path) -> None:
    one = served("t0ken")
    code, _out, err = cli(one, "status", "--local")
    assert code == 4
    assert err == (
        f"error: the daemon at unix:{one.socket} refused the token (HTTP 401): "
        "give it with --token-file FILE or the file's supervisor.token_file\n"
    )
    (tmp_path / "token").write_text("t0ken\n")
    assert cli(one, "status", "--local", "--token-file", str(tmp_path / "token"))[0] == 0


@pytest.mark.parametrize(
    "argv",
    [
        ["status"],
        ["reload"],
        ["pause", "db0"],
        ["restart", "db0"],
        ["rolling-restart"],
    ],
)
def test_no_daemon_answering_is_3(tmp_path: Path, argv: list[str]) -> None:
    code, _out, err = run(argv[0], "--socket", str(tmp_path / "nobody.sock"), *argv[1:])
    assert code == 3 and err.startswith(f"error: no ceres-supervisor answers at unix:{tmp_path}/nobody.sock")


@pytest.mark.parametrize(
    ("answer", "code", "said"),
    [
        (ReloadResult(True, None, None), 0, "reload applied\n"),
        (ReloadResult(False, "cluster.toml: invalid\n  cluster.name: cannot change", None), 2,
         "reload refused, the daemon keeps its last good desired state:\ncluster.toml: invalid\n  cluster.name: cannot change\n"),
    ],
)  # fmt: skip
def test_reload_is_0_when_applied_and_2_when_refused(
    served: Callable[..., Served], answer: ReloadResult, code: int, said: str
) -> None:
    one = served()
    one.do(lambda d: setattr(d, "reload_answer", answer))
    got, out, err = cli(one, "reload")
    assert (got, out + err) == (code, said)


def test_reload_without_the_token_is_4(served: Callable[..., Served]) -> None:
    one = served("t0ken")
    code, _out, err = cli(one, "reload")
    assert code == 4 and err.startswith(
        f"error: the daemon at unix:{one.socket} refused the token (HTTP 401)"
    )


def test_pause_and_resume_say_where_they_hold(served: Callable[..., Served]) -> None:
    one = served()
    code, out, _err = cli(one, "pause", "db0", "db1")
    assert code == 0
    assert out == "db0, db1: paused (holds on this machine now; the store when it answers again)\n"
    assert one.do(lambda d: d.store_sync.pauses.current.nodes) == {"db0", "db1"}
    assert cli(one, "resume", "--all")[:2] == (
        0,
        "the whole cluster: resumed (holds on this machine now; the store when it answers again)\n",
    )
    assert one.do(lambda d: d.store_sync.pauses.current.nodes) == frozenset()


def test_pause_of_an_unknown_node_is_5_with_the_known_names(served: Callable[..., Served]) -> None:
    one = served()
    code, _out, err = cli(one, "pause", "db7")
    assert code == 5
    assert err == (
        "error: unknown node 'db7': nothing was changed; the nodes of the file: meta0, meta1, meta2, db0, db1, db2\n"
    )


def test_pause_without_the_token_is_4(served: Callable[..., Served]) -> None:
    assert cli(served("t0ken"), "pause", "--all")[0] == 4


def test_restart_no_wait_prints_the_operation_and_a_refusal_is_6(served: Callable[..., Served]) -> None:
    one = served()
    code, out, _err = cli(one, "restart", "db0", "--no-wait")
    assert code == 0 and re.fullmatch(r"operation op-\S+\n", out)  # the id only (README)
    code, _out, err = cli(one, "restart", "db0", "--no-wait")
    assert code == 6 and err.startswith("error: db0 is already being restarted")
    code, out, _err = cli(one, "rolling-restart", "--role", "meta", "--no-wait", "--json")
    assert code == 0 and json.loads(out)["nodes"] == ["meta1", "meta2", "meta0"]


def test_restart_follows_the_operation_to_its_end(served: Callable[..., Served], tmp_path: Path) -> None:
    one = served()
    remote = build(tmp_path / "remote", META3, local=False)
    one.do(lambda d: setattr(d, "snapshot", snapshot(remote)))  # db1's agent is not up: the restart fails
    code, out, _err = cli(one, "restart", "db1")
    assert code == 1
    assert "db1 runs on 127.0.0.1, whose supervisor is not up" in out and "done: failed" in out


def test_the_api_address_comes_from_the_file_else_the_default(
    write: Callable[..., Path], tmp_path: Path
) -> None:
    (tmp_path / "token").write_text("s3cret\n")
    path = write(
        BASE.replace(
            "[cluster]\n",
            f'[supervisor]\nlisten = "0.0.0.0:5999"\ntoken_file = "{tmp_path}/token"\n\n[cluster]\n',
            1,
        )
    )
    ep = client.endpoint(None, None, str(path))
    assert (ep.base, ep.socket, ep.token) == ("http://127.0.0.1:5999", None, "s3cret")
    assert ep.where == f"0.0.0.0:5999 (supervisor.listen of {path})"
    unix = client.endpoint(None, None, str(write('[supervisor]\nlisten = "unix:/run/c.sock"\n', "u.toml")))
    assert (unix.base, unix.socket, unix.token) == ("http://localhost", "/run/c.sock", None)
    plain = client.endpoint(None, None, str(write(BASE, "plain.toml")))  # no [supervisor]: the default listen
    assert (plain.base, plain.socket, plain.token) == ("http://127.0.0.1:5480", None, None)
    (tmp_path / "tok").write_text("  \n")
    assert client.endpoint("http://h:1/", None, None, str(tmp_path / "tok")) == client.Endpoint(
        "http://h:1", None, None, "http://h:1"
    )


@pytest.mark.parametrize(
    ("text", "code", "said"),
    [
        (None, 66, "cannot read {missing}: No such file or directory (give the desired-state file with -c FILE, "
         "or the daemon's API with --url URL or --socket PATH)"),
        ('[supervisor]\nlisten = "nonsense"\n', 2, "{path}: supervisor.listen: "),
        ('[supervisor]\ntoken_file = "/nonexistent"\n', 66,
         "cannot read the token file /nonexistent (supervisor.token_file of {path}): No such file or directory"),
        ("[[[", 2, "{path}: not valid TOML ("),
    ],
)  # fmt: skip
def test_a_file_that_cannot_say_where_the_api_is_is_an_error(
    write: Callable[..., Path], tmp_path: Path, text: str | None, code: int, said: str
) -> None:
    path = tmp_path / "missing.toml" if text is None else write(text, "api.toml")
    with pytest.raises(Failure) as failed:
        client.endpoint(None, None, str(path))
    assert failed.value.code == code
    assert failed.value.message.startswith(said.format(missing=path, path=path))


# --- the commands that need Docker: what they refuse before asking it ---------------------------------------


def unix_file(write: Callable[..., Path], tmp_path: Path, listen: str, extra: str = "") -> Path:
    text = BASE.replace('state_dir = "/var/lib/ceres-supervisor"', f'state_dir = "{tmp_path}/state"')
    return write(text.replace("[cluster]\n", f'[supervisor]\nlisten = "{listen}"\n\n[cluster]\n', 1) + extra)


@pytest.mark.parametrize("command", ["plan", "down --force"])
def test_plan_and_down_say_when_docker_cannot_be_asked_and_are_3(
    write: Callable[..., Path], tmp_path: Path, command: str
) -> None:
    path = unix_file(write, tmp_path, f"unix:{tmp_path}/nobody.sock")
    code, out, err = run(
        *command.split(), "-c", str(path), "--docker-url", f"unix://{tmp_path}/no-docker.sock"
    )
    assert (code, out) == (3, "")
    assert err.startswith("error: ") and "Docker Engine unavailable: no socket at" in err


def test_down_refuses_while_a_daemon_answers_for_the_file(
    served: Callable[..., Served], write: Callable[..., Path], tmp_path: Path
) -> None:
    one = served()
    path = unix_file(write, tmp_path, f"unix:{one.socket}")
    code, _out, err = run("down", "-c", str(path), "--docker-url", f"unix://{tmp_path}/no-docker.sock")
    assert code == 6 and err.startswith(f"error: a ceres-supervisor daemon answers at unix:{one.socket}")


def test_run_refuses_a_file_whose_topology_changed_before_anything_is_touched(
    write: Callable[..., Path], tmp_path: Path
) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "topology.json").write_text('{"topology": "static", "ceresdb_nodes": ["db0"]}')
    path = unix_file(write, tmp_path, f"unix:{tmp_path}/api.sock")
    for command in ("run", "plan"):
        code, _out, err = run(command, "-c", str(path))
        assert (
            code == 2 and "ceresdb.nodes: this static-topology cluster started with CeresDB nodes db0" in err
        )


def test_run_refuses_a_corrupt_pause_book_naming_it(write: Callable[..., Path], tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "paused.json").write_text("{")
    path = unix_file(write, tmp_path, f"unix:{tmp_path}/api.sock")
    code, _out, err = run("run", "-c", str(path), "--docker-url", f"unix://{tmp_path}/no-docker.sock")
    assert code == 2 and err.startswith(f"error: {tmp_path}/state/paused.json: not a pause book")


def test_run_is_1_when_its_api_address_cannot_be_served(write: Callable[..., Path], tmp_path: Path) -> None:
    (tmp_path / "api.sock").write_text("a regular file")
    path = unix_file(write, tmp_path, f"unix:{tmp_path}/api.sock")
    code, _out, err = run("run", "-c", str(path), "--docker-url", f"unix://{tmp_path}/no-docker.sock")
    assert code == 1
    assert err.rstrip().endswith(
        f"cannot serve the status API on unix:{tmp_path}/api.sock: {tmp_path}/api.sock exists and is not a socket"
    )


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        (["--advertise", "ftp://x"], "--advertise 'ftp://x' is not an http:// or https:// URL"),
        (["--store", "127.0.0.1:2379"], "--store '127.0.0.1:2379': each member is an http:// URL"),
    ],
)
def test_run_refuses_a_bad_advertise_or_store_address(
    write: Callable[..., Path], tmp_path: Path, options: list[str], problem: str
) -> None:
    path = unix_file(write, tmp_path, f"unix:{tmp_path}/api.sock")
    code, _out, err = run("run", "-c", str(path), *options)
    assert (code, err) == (64, f"error: {problem}\n")
