"""One grammar for every command: `-c` defaulted the same way (a missing file said so), every option
described, examples and exit codes in each help, a usage mistake exit 64 in one line; every exit
code an answer of the daemon can mean, each in one plain line (no repr, no library text); the
`--json` of the commands that need no Docker, parsed.

The daemon's answers come from a small HTTP server of the API's shape on a real socket (the CLI
runs its own event loop, so the server runs on a thread of its own); the commands run in-process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from ceres_supervisor.cli import client, commands, exits

from .conftest import BASE

ROOT = Path(__file__).resolve().parents[2]
Answer = tuple[int, object]


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = commands.main(list(argv))
    return code, out.getvalue(), err.getvalue()


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = commands.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


@dataclass
class FakeDaemon:
    """An HTTP server answering each `METHOD path` with what `answers` holds (a pair, or a function
    of the request's query giving one); every request is kept."""

    answers: dict[str, Answer | Callable[[dict[str, str]], Answer]] = field(default_factory=dict)
    seen: list[tuple[str, str, dict[str, str], object]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else None
        self.seen.append((request.method, request.path, dict(request.query), body))
        answer = self.answers.get(f"{request.method} {request.path}")
        if answer is None:
            return web.json_response({"error": "not found", "status": 404}, status=404)
        status, payload = answer(dict(request.query)) if callable(answer) else answer
        return web.json_response(payload, status=status)


@pytest.fixture
def daemon() -> Iterator[FakeDaemon]:
    fake = FakeDaemon()
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    runner_box: list[web.AppRunner] = []

    async def start() -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", fake.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        fake.url = f"http://{host}:{port}"
        runner_box.append(runner)
        ready.set()

    thread = threading.Thread(
        target=lambda: (loop.run_until_complete(start()), loop.run_forever()), daemon=True
    )
    thread.start()
    assert ready.wait(10), "the fake daemon did not start"
    try:
        yield fake
    finally:
        asyncio.run_coroutine_threadsafe(runner_box[0].cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


# -- the grammar ----------------------------------------------------------------------------------


def test_every_command_has_examples_exit_codes_and_described_options() -> None:
    for name, parser in subcommands().items():
        text = parser.format_help()
        examples = text.split("examples:\n", 1)[1].split("\n\n", 1)[0].splitlines()
        assert examples and all("ceres-supervisor " in e for e in examples), name
        assert "exit codes:\n" in text and "  64  " in text and "  70  " in text, name
        for action in parser._actions:
            assert action.help and action.help is not argparse.SUPPRESS, (
                name,
                action.option_strings or action.dest,
            )
            for option in action.option_strings:
                assert option in text, (name, option)


def test_c_is_everywhere_with_the_same_default_and_every_report_has_json() -> None:
    for name, parser in subcommands().items():
        if name == "version":  # the one command that reads no file
            continue
        config = next(a for a in parser._actions if "--config" in a.option_strings)
        assert config.option_strings == ["-c", "--config"] and config.default is None, name
        assert client.DEFAULT_CONFIG in str(config.help), name
        if name != "completion":  # it prints a shell script, not a report
            assert any("--json" in a.option_strings for a in parser._actions), name
        assert not any(a.help is argparse.SUPPRESS for a in parser._actions), name


def test_the_top_help_tables_every_exit_code() -> None:
    text = commands.build_parser().format_help()
    for code, meaning in exits.TABLE:
        assert f"  {code:<3} {meaning}" in text
    assert len({code for code, _ in exits.TABLE}) == len(exits.TABLE) == 13


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["bogus"], "unknown command 'bogus'; the commands: validate, render, run,"),
        (["status", "--bogus"], "unrecognized arguments: --bogus"),
        (["render", "-c", "x.toml"], "the following arguments are required: -o/--output"),
        (["rolling-restart", "--role", "x"], "argument --role: invalid choice: 'x'"),
        (["events", "-n", "many"], "argument -n/--limit: invalid int value: 'many'"),
        (["pause", "--url", "http://127.0.0.1:1"], "name the nodes to pause, or give --all"),
        (["status", "--url", "http://"], "--url 'http://' is not the API's base URL"),
        (["status", "--url", "ftp://x:1"], "--url 'ftp://x:1' is not the API's base URL"),
        (
            ["events", "--url", "127.0.0.1:1", "--since", "last tuesday"],
            "--since 'last tuesday': give a duration ago",
        ),
    ],
)
def test_a_usage_mistake_is_exit_64_in_one_line(argv: list[str], expected: str) -> None:
    code, out, err = run(*argv)
    assert code == exits.USAGE and out == "", (code, err)
    assert err.count("\n") == 1 and err.startswith("error: ") and expected in err, err
    if "commands:" in err:
        assert "nodes" not in err.split("commands:", 1)[1].replace(",", " ").split(), err  # no hidden command


@pytest.mark.parametrize(
    "argv",
    [
        ["validate"],
        ["render", "-o", "out"],
        ["plan"],
        ["down"],
        ["run"],
        ["status"],
        ["reload"],
        ["events"],
        ["logs", "db0"],
        ["describe", "db0"],
        ["pause", "db0"],
        ["restart", "db0"],
    ],
)
def test_a_missing_file_is_said_so(argv: list[str], tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    code, _out, err = run(*argv, "-c", str(missing))
    assert code == exits.NO_FILE, (argv, code, err)
    assert (
        err == f"error: cannot read {missing}: no such file (give the desired-state file with -c FILE)\n"
        or (
            err.startswith(
                f"error: cannot read {missing}: No such file or directory (give the desired-state file"
            )
        )
    ), err


def test_with_url_the_default_file_is_not_needed_but_a_named_token_file_is(tmp_path: Path) -> None:
    code, _out, err = run("status", "--url", "127.0.0.1:1")  # a bare host:port is http
    assert (
        code == exits.UNREACHABLE
        and err == "error: no ceres-supervisor answers at http://127.0.0.1:1: connection refused\n"
    )
    code, _out, err = run("status", "--url", "http://127.0.0.1:1", "--token-file", str(tmp_path / "none"))
    assert code == exits.NO_FILE and "cannot read the token file" in err and "--token-file" in err
    code, _out, err = run("status", "--socket", str(tmp_path / "api.sock"))
    assert code == exits.UNREACHABLE and err.endswith(f"no socket at {tmp_path / 'api.sock'}\n"), err


def test_a_file_that_is_not_toml_is_invalid_for_the_api_commands_too(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[supervisor\n")
    code, _out, err = run("status", "-c", str(bad))
    assert code == exits.INVALID and err.startswith(f"error: {bad}: not valid TOML") and err.count("\n") == 1


# -- the local commands' --json -------------------------------------------------------------------


def test_validate_render_and_version_json(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(BASE)
    code, out, _err = run("validate", "-c", str(good), "--json")
    doc = json.loads(out)
    assert code == 0 and doc["valid"] is True and doc["nodes"] == {"meta": 1, "ceresdb": 2}
    assert set(doc) == {"file", "valid", "cluster", "release", "nodes", "warnings", "problems"}
    bad = tmp_path / "bad.toml"
    bad.write_text(BASE + '\n[supervisor]\nprobe_intervall = "5s"\n')
    code, out, err = run("validate", "-c", str(bad), "--json")
    doc = json.loads(out)
    assert code == exits.INVALID and err == "" and doc["valid"] is False
    assert doc["problems"] == [{"path": "supervisor.probe_intervall", "message": "unknown key"}]
    code, out, _err = run("render", "-c", str(good), "-o", str(tmp_path / "out"), "--json")
    doc = json.loads(out)
    assert (
        code == 0
        and sorted(Path(f).name for f in doc["files"])
        == sorted(["ceresmeta.toml", "env", "ceresdb.toml", "env", "ceresdb.toml", "env"])
        and doc["warnings"] == []
    )
    code, out, _err = run("version", "--json")
    assert code == 0 and set(json.loads(out)) == {"version", "python", "docker_sdk"}


def test_completion_nodes_lists_the_file_s_nodes(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(BASE)
    assert run("completion", "nodes", "-c", str(good)) == (0, "meta0\ndb0\ndb1\n", "")
    assert run("completion", "nodes", "-c", str(tmp_path / "none.toml")) == (0, "", "")


# -- what the daemon's answers mean ---------------------------------------------------------------

CLUSTER = {
    "cluster": {"name": "c", "state": "healthy", "spec_hashes": {"127.0.0.1": "h"}, "spec_agrees": True},
    "coordination": {"ok": True, "detail": "ok", "endpoint": None, "unreadable": []},
    "meta": {"leader": "meta0", "members": ["meta0"]},
    "agents": [{"host": "127.0.0.1", "state": "up"}],
    "nodes": [{"name": "meta0", "role": "meta", "host": "127.0.0.1", "state": "healthy", "reason": None}],
    "disruptions": [],
    "paused": {"all": False, "nodes": []},
}
STATUS = {
    "cluster": {"name": "c", "state": "healthy", "spec_hash": "h"},
    "reload": {"ok": True, "error": None, "at": None},
    "engine": {"ok": True, "error": None},
    "nodes": [],
}


@pytest.mark.parametrize(
    ("answer", "code", "line"),
    [
        (
            (500, {"error": "internal error", "status": 500}),
            exits.INTERNAL,
            "the daemon at {url} failed (HTTP 500): internal error",
        ),
        (
            (401, {"error": "unauthorized", "status": 401}),
            exits.REFUSED,
            "the daemon at {url} refused the token (HTTP 401): give it with --token-file FILE or the file's "
            "supervisor.token_file",
        ),
        (
            (200, ["not", "an", "object"]),
            exits.INTERNAL,
            "the daemon at {url} answered HTTP 200 without a JSON object",
        ),
    ],
)
def test_status_exit_codes_say_what_the_answer_meant(
    daemon: FakeDaemon, answer: Answer, code: int, line: str
) -> None:
    daemon.answers["GET /v1/cluster"] = answer
    got, out, err = run("status", "--url", daemon.url)
    assert (got, out) == (code, "") and err == f"error: {line.format(url=daemon.url)}\n"
    assert "{'" not in err and "HTTPConnectionPool" not in err


def test_status_healthy_unhealthy_and_with_the_store_away(daemon: FakeDaemon) -> None:
    daemon.answers["GET /v1/cluster"] = (200, CLUSTER)
    daemon.answers["GET /v1/status"] = (200, STATUS)
    code, out, _err = run("status", "--url", daemon.url, "--json")
    assert code == 0 and json.loads(out) == CLUSTER
    degraded = {**CLUSTER, "cluster": {**CLUSTER["cluster"], "state": "degraded"}}  # type: ignore[dict-item]
    daemon.answers["GET /v1/cluster"] = (200, degraded)
    assert run("status", "--url", daemon.url)[0] == exits.NOT_OK
    away = {
        **CLUSTER,
        "coordination": {"ok": False, "detail": "no quorum", "endpoint": None, "unreadable": []},
    }
    daemon.answers["GET /v1/cluster"] = (503, away)
    code, out, _err = run("status", "--url", daemon.url, "--json")
    assert code == exits.NOT_OK and json.loads(out) == away  # the same schema, whatever the store does
    code, out, _err = run("status", "--url", daemon.url)
    assert code == exits.NOT_OK and "coordination unavailable (no quorum)" in out
    code, out, _err = run("status", "--url", daemon.url, "--local", "--json")
    assert code == 0 and json.loads(out) == STATUS


def test_status_wide_adds_the_columns_through_the_command(daemon: FakeDaemon) -> None:
    daemon.answers["GET /v1/cluster"] = (200, CLUSTER)
    code, narrow, _err = run("status", "--url", daemon.url)
    assert code == 0
    code, wide, _err = run("status", "--url", daemon.url, "-o", "wide")
    assert code == 0
    header = next(line for line in wide.splitlines() if line.startswith("NAME"))
    assert all(column in header for column in ("AGENT", "LAST EXIT", "CONTAINER")), header
    assert not any(column in narrow for column in ("LAST EXIT", "CONTAINER")), narrow


@pytest.mark.parametrize(
    ("path", "argv", "answer", "code", "line"),
    [
        (
            "POST /v1/pause",
            ["pause", "db0", "db9"],
            (
                404,
                {
                    "error": "unknown node 'db9': nothing was changed",
                    "status": 404,
                    "unknown": ["db9"],
                    "known": ["meta0", "db0"],
                },
            ),
            exits.UNKNOWN_NODE,
            "unknown node 'db9': nothing was changed; the nodes of the file: meta0, db0",
        ),
        (
            "POST /v1/nodes/db0/restart",
            ["restart", "db0"],
            (409, {"error": "db0 is already being restarted", "status": 409, "operation": "op-1"}),
            exits.CONFLICT,
            "db0 is already being restarted",
        ),
        (
            "GET /v1/nodes/db4/logs",
            ["logs", "db4"],
            (
                502,
                {
                    "error": "the supervisor on 127.0.0.3 (http://127.0.0.3:5480) does not answer: connection refused",
                    "status": 502,
                },
            ),
            exits.UNREACHABLE,
            "the supervisor on 127.0.0.3 (http://127.0.0.3:5480) does not answer: connection refused",
        ),
        (
            "GET /v1/nodes/db4/describe",
            ["describe", "db4"],
            (500, "<html>oops</html>"),
            exits.INTERNAL,
            "the daemon at {url} failed (HTTP 500): <html>oops</html>",
        ),
        (
            "POST /v1/reload",
            ["reload"],
            (422, {"ok": False, "error": "f.toml: invalid\n  x: unknown key", "at": None}),
            exits.INVALID,
            None,
        ),
    ],
)
def test_every_refusal_has_its_exit_code(
    daemon: FakeDaemon, path: str, argv: list[str], answer: Answer, code: int, line: str | None
) -> None:
    daemon.answers[path] = answer
    daemon.answers["GET /v1/status"] = (200, STATUS)
    got, _out, err = run(*argv, "--url", daemon.url)
    assert got == code, err
    if line is not None:
        assert err == f"error: {line.format(url=daemon.url)}\n"
    else:
        assert err.startswith("reload refused, the daemon keeps its last good desired state:\n")


def test_pause_of_several_nodes_is_one_request(daemon: FakeDaemon) -> None:
    daemon.answers["POST /v1/pause"] = (
        200,
        {
            "ok": True,
            "nodes": ["db0", "db1"],
            "all": False,
            "paused": True,
            "holds_on": "store and file",
            "who": "cli",
        },
    )
    code, out, _err = run("pause", "db1", "db0", "db1", "--url", daemon.url, "--json")
    assert code == 0 and json.loads(out)["nodes"] == ["db0", "db1"]
    assert daemon.seen == [("POST", "/v1/pause", {}, {"who": "cli", "nodes": ["db1", "db0"]})]


def test_a_long_reload_is_running_not_failed(daemon: FakeDaemon) -> None:
    daemon.answers["GET /v1/status"] = (200, STATUS)  # its reload.at never changes: still running
    daemon.answers["POST /v1/reload"] = (202, {"ok": None, "error": "reload still running", "at": None})
    code, out, err = run("reload", "--url", daemon.url, "--json", "--wait", "1.5")
    assert code == exits.RUNNING and json.loads(out) == {
        "outcome": "running",
        "ok": None,
        "error": None,
        "at": None,
    }
    assert "still running" in err and "error" not in err
    answers = iter(
        [STATUS, STATUS, {**STATUS, "reload": {"ok": True, "error": None, "at": "2026-11-28T12:00:01Z"}}]
    )
    daemon.answers["GET /v1/status"] = lambda _query: (200, next(answers))
    code, out, _err = run("reload", "--url", daemon.url, "--json", "--wait", "30")
    assert code == 0 and json.loads(out) == {
        "outcome": "applied",
        "ok": True,
        "error": None,
        "at": "2026-11-28T12:00:01Z",
    }


def test_restart_and_rolling_restart_json(daemon: FakeDaemon) -> None:
    operation = {
        "id": "op-7",
        "kind": "restart",
        "who": "cli",
        "nodes": ["db0"],
        "current": None,
        "started_at": "t",
        "steps": [{"at": "t", "text": "stopped"}],
        "outcome": "ok",
        "error": None,
    }
    daemon.answers["POST /v1/nodes/db0/restart"] = (202, {"operation": "op-7"})
    daemon.answers["GET /v1/operations/op-7"] = (200, operation)
    code, out, _err = run("restart", "db0", "--url", daemon.url, "--json")
    assert code == 0 and json.loads(out) == operation
    code, out, _err = run("restart", "db0", "--url", daemon.url, "--json", "--no-wait")
    assert code == 0 and json.loads(out) == {"operation": "op-7", "nodes": ["db0"]}
    daemon.answers["POST /v1/rolling-restart"] = (202, {"operation": "op-8", "nodes": ["meta0", "db0"]})
    code, out, _err = run("rolling-restart", "--url", daemon.url, "--json", "--no-wait")
    assert code == 0 and json.loads(out) == {"operation": "op-8", "nodes": ["meta0", "db0"]}
    daemon.answers["GET /v1/operations/op-7"] = (
        200,
        {**operation, "outcome": "failed", "error": "db0 not healthy"},
    )
    code, out, err = run("restart", "db0", "--url", daemon.url)
    assert code == exits.NOT_OK and err == "error: db0 not healthy\n"


def test_events_logs_and_describe_json(daemon: FakeDaemon) -> None:
    event = {
        "at": "2026-11-28T12:00:00.000Z",
        "node": "db1",
        "type": "died",
        "reason": "exit 3",
        "message": "died",
        "agent": "127.0.0.2",
    }
    daemon.answers["GET /v1/cluster/events"] = (
        200,
        {
            "events": [event],
            "complete": False,
            "agents": [
                {"host": "127.0.0.1", "ok": True, "error": None},
                {
                    "host": "127.0.0.3",
                    "ok": False,
                    "error": "down since 2026-11-28T11:00:00Z: its events stay on it",
                },
            ],
        },
    )
    code, out, err = run(
        "events", "--url", daemon.url, "--json", "--node", "db1", "--since", "2026-11-28T11:00:00Z"
    )
    assert code == 0 and [json.loads(line) for line in out.splitlines()] == [event]
    assert err == "note: no events from 127.0.0.3: down since 2026-11-28T11:00:00Z: its events stay on it\n"
    assert daemon.seen[-1][2] == {"limit": "50", "node": "db1", "since": "2026-11-28T11:00:00.000Z"}
    code, out, _err = run("events", "--url", daemon.url)
    assert out == "2026-11-28T12:00:00.000Z  127.0.0.2  db1  died  exit 3: died\n"
    daemon.answers["GET /v1/cluster/events"] = (
        200,
        {"events": [], "complete": False, "agents": [{"host": "127.0.0.1", "ok": True, "error": None}]},
    )
    code, out, err = run("events", "--url", daemon.url)
    assert (code, out) == (0, "") and err == (
        "note: the coordination store cannot be read: these are one supervisor's events\n"
    )
    daemon.answers["GET /v1/nodes/db1/logs"] = (
        200,
        {
            "node": "db1",
            "agent": "127.0.0.2",
            "container_id": "c",
            "lines": [{"at": "2026-11-28T12:00:00.1Z", "text": "hello"}],
        },
    )
    code, out, _err = run("logs", "db1", "--url", daemon.url, "--json", "-n", "5")
    assert code == 0 and [json.loads(line) for line in out.splitlines()] == [
        {"at": "2026-11-28T12:00:00.1Z", "node": "db1", "text": "hello"}
    ]
    assert daemon.seen[-1][2] == {"lines": "5"}
    assert run("logs", "db1", "--url", daemon.url)[1] == "hello\n"
    described = {
        "node": "db1",
        "role": "ceresdb",
        "host": "127.0.0.2",
        "agent": "127.0.0.2",
        "state": "crashloop",
        "reason": "exit 3",
        "status": {},
        "config_path": "/x/config/db1/ceresdb.toml",
        "data_dir": "/x",
        "lease": None,
        "slot": None,
        "paused": {"node": False, "all": False},
        "container": None,
        "history": [],
        "exits": [],
        "events": [],
        "logs": {"lines": [{"at": "t", "text": "boom"}], "error": None},
        "source": {"agent": "127.0.0.2", "complete": True, "error": None},
    }
    daemon.answers["GET /v1/nodes/db1/describe"] = (200, described)
    code, out, _err = run("describe", "db1", "--url", daemon.url, "--json")
    assert code == 0 and json.loads(out) == described
    code, out, _err = run("describe", "db1", "--url", daemon.url)
    assert "state:      crashloop: exit 3" in out and "last log lines:\n  boom" in out


def test_watch_until_ctrl_c_is_exit_130_with_one_document_a_line(daemon: FakeDaemon) -> None:
    daemon.answers["GET /v1/cluster"] = (200, CLUSTER)
    with subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ceres_supervisor",
            "status",
            "--url",
            daemon.url,
            "--watch",
            "--json",
            "--interval",
            "0.2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            assert process.stdout is not None
            lines = [process.stdout.readline(), process.stdout.readline()]  # two rounds: it goes on by itself
            process.send_signal(signal.SIGINT)
            code = process.wait(30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)
    assert code == exits.INTERRUPTED
    assert [json.loads(line) for line in lines] == [CLUSTER, CLUSTER]


def test_run_json_logs_json_lines_even_for_its_warnings(tmp_path: Path) -> None:
    """`run --json` on the three-meta example (it warns), on an address another socket holds: the
    warning is a JSON line, the failure to bind one plain line, exit 1, nothing touched."""
    text = (ROOT / "etc" / "ceres-supervisor" / "examples" / "three-meta.toml").read_text()
    config = tmp_path / "cluster.toml"
    config.write_text(
        text.replace('state_dir = "/var/lib/ceres-supervisor"', f'state_dir = "{tmp_path / "state"}"')
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "ceres_supervisor",
                "run",
                "-c",
                str(config),
                "--json",
                "--listen",
                f"127.0.0.1:{port}",
                "--docker-url",
                f"unix://{tmp_path}/no-docker.sock",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    lines = done.stderr.splitlines()
    assert done.returncode == exits.NOT_OK, done.stderr
    logged = [json.loads(line) for line in lines[:-1]]
    assert logged and all("event" in entry and "level" in entry for entry in logged)
    assert any(entry["event"] == "desired_state_warning" for entry in logged), logged
    assert lines[-1].startswith(f"error: cannot serve the status API on 127.0.0.1:{port}: ")


def follow(daemon: FakeDaemon, args: list[str], expected_lines: int) -> tuple[int, list[str]]:
    """`ceres-supervisor ARGS` as a process until it printed `expected_lines`, then Ctrl-C."""
    with subprocess.Popen(
        [sys.executable, "-m", "ceres_supervisor", *args, "--url", daemon.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        deadline = threading.Timer(20, process.kill)  # a line that never comes ends the read ("")
        deadline.start()
        try:
            assert process.stdout is not None
            lines = [process.stdout.readline() for _ in range(expected_lines)]
            process.send_signal(signal.SIGINT)
            code = process.wait(30)
        finally:
            deadline.cancel()
            if process.poll() is None:
                process.kill()
                process.wait(10)
    return code, lines


def test_events_follow_prints_each_event_once_across_polls(daemon: FakeDaemon) -> None:
    """`events -f` asks again from the last instant it printed; an event of that instant that
    comes again is not printed twice, one that is new is."""
    first = {
        "at": "2026-12-07T10:00:00.100Z",
        "node": "db0",
        "type": "died",
        "reason": "exit 137",
        "message": "m",
    }
    same = {
        "at": "2026-12-07T10:00:01.200Z",
        "node": "db1",
        "type": "started",
        "reason": None,
        "message": "a",
    }
    later = {**same, "message": "b"}  # the same instant, another event
    newest = {
        "at": "2026-12-07T10:00:02.000Z",
        "node": "db0",
        "type": "started",
        "reason": None,
        "message": "c",
    }

    def answer(query: dict[str, str]) -> Answer:
        if "since" not in query:
            return 200, {"events": [first, same], "agents": [], "complete": True}
        if query["since"] == newest["at"]:  # a later poll (a slow machine: Ctrl-C came after it)
            return 200, {"events": [newest], "agents": [], "complete": True}
        assert query["since"] == same["at"], query
        return 200, {"events": [same, later, newest], "agents": [], "complete": True}

    daemon.answers["GET /v1/cluster/events"] = answer
    code, lines = follow(daemon, ["events", "-f", "--json"], 4)
    assert code == exits.INTERRUPTED
    assert [json.loads(line)["message"] for line in lines] == ["m", "a", "b", "c"]


def test_logs_follow_prints_each_line_once_across_polls(daemon: FakeDaemon) -> None:
    """`logs -f` asks again from the whole second of the newest line (Docker's `since` is in
    seconds); lines of that second already printed are skipped, Docker's trimmed nanoseconds sort."""
    lines_1 = [
        {"at": "2026-12-07T10:00:00.5Z", "text": "one"},
        {"at": "2026-12-07T10:00:01.25Z", "text": "two"},
    ]
    lines_2 = [
        {"at": "2026-12-07T10:00:01.25Z", "text": "two"},
        {"at": "2026-12-07T10:00:01.3Z", "text": "three"},
    ]

    def answer(query: dict[str, str]) -> Answer:
        if "since" not in query:
            return 200, {"node": "db0", "lines": lines_1}
        assert query["since"] == "2026-12-07T10:00:01Z", query
        return 200, {"node": "db0", "lines": lines_2}

    daemon.answers["GET /v1/nodes/db0/logs"] = answer
    code, lines = follow(daemon, ["logs", "db0", "-f"], 3)
    assert code == exits.INTERRUPTED
    assert [line.rstrip("\n") for line in lines] == ["one", "two", "three"]
