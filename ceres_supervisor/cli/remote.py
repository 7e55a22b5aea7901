"""The commands that talk to a running daemon (this machine's, or any agent's with --url): status,
reload, pause and resume, planned and rolling restarts, events, logs, describe. Each returns an
exit code (`exits`) or raises `exits.Failure`; with `--json` each prints JSON whose schema is in
README (a document; for `events`, `logs` and `status --watch`, one object a line).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from urllib.parse import quote, urlencode

from ceres_supervisor.cli import client, exits, tables
from ceres_supervisor.cli.exits import Failure

POLL_S: Final = 1.0
"""How often `-f` and a followed operation ask again."""
RELOAD_ANSWER_S: Final = 90.0
"""The daemon answers a reload within 60 s (202 `still running` after that)."""
_AGO: Final = re.compile(r"(\d+)(s|m|h|d)")
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def endpoint(args: argparse.Namespace) -> client.Endpoint:
    return client.endpoint(args.url, args.socket, args.config, args.token_file)


def request(
    args: argparse.Namespace,
    method: str,
    path: str,
    body: object = None,
    timeout_s: float = client.DEFAULT_TIMEOUT_S,
) -> tuple[client.Endpoint, int, Any]:
    ep = endpoint(args)
    code, answer = asyncio.run(client.call(ep, method, path, timeout_s, body))
    return ep, code, answer


def width() -> int | None:
    """The terminal's width; None when the output goes to a pipe or a file (nothing is cut)."""
    return shutil.get_terminal_size((80, 24)).columns if sys.stdout.isatty() else None


def print_json(doc: object, lines: bool = False) -> None:
    print(json.dumps(doc, separators=(",", ":")) if lines else json.dumps(doc, indent=2), flush=True)


def parse_since(text: str | None, now: datetime | None = None) -> str | None:
    """`--since`: a duration ago (`90s`, `10m`, `2h`, `1d`) or an RFC 3339 time; as RFC 3339."""
    if not text:
        return None
    now = now or datetime.now(UTC)
    found = _AGO.fullmatch(text.strip())
    if found:
        at = now - timedelta(seconds=int(found.group(1)) * _UNITS[found.group(2)])
    else:
        try:
            at = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        except ValueError:
            raise Failure(
                exits.USAGE,
                f"--since {text!r}: give a duration ago (10m, 2h, 1d) or a time (2026-11-28T12:00:00Z)",
            ) from None
        at = at if at.tzinfo else at.replace(tzinfo=UTC)
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- status ---------------------------------------------------------------------------------------


def _status_once(args: argparse.Namespace) -> tuple[int, dict[str, Any], dict[str, Any] | None]:
    """(exit code, the document, this agent's /v1/status for the table's reload and engine lines)."""
    ep = endpoint(args)
    if args.local:
        code, doc = asyncio.run(client.call(ep, "GET", "/v1/status"))
        body = client.expect(code, doc, ep)
        return (
            (exits.OK if (body.get("cluster") or {}).get("state") == "healthy" else exits.NOT_OK),
            body,
            body,
        )
    code, doc = asyncio.run(client.call(ep, "GET", "/v1/cluster"))
    body = client.expect(code, doc, ep, ok=(200, 503))  # 503: the store away, the same document
    local = None
    if not args.json:
        local_code, local_doc = asyncio.run(client.call(ep, "GET", "/v1/status"))
        local = local_doc if local_code == 200 and isinstance(local_doc, dict) else None
    healthy = code == 200 and (body.get("cluster") or {}).get("state") == "healthy"
    return (exits.OK if healthy else exits.NOT_OK), body, local


def status(args: argparse.Namespace) -> int:
    wide = args.output == "wide"
    if not args.watch:
        code, doc, local = _status_once(args)
        if args.json:
            print_json(doc)
        else:
            print(tables.table(doc, width(), wide=wide, local=local), flush=True)
        return code
    _take_ctrl_c()
    while True:  # until Ctrl-C (exit 130), or the daemon stops answering
        code, doc, local = _status_once(args)
        if args.json:
            print_json(doc, lines=True)
        else:
            clear = "\x1b[H\x1b[2J" if sys.stdout.isatty() else ""
            stamp = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
            print(
                f"{clear}{tables.table(doc, width(), wide=wide, local=local)}\n(every {args.interval:g}s; "
                f"{stamp}; Ctrl-C to stop)",
                flush=True,
            )
        time.sleep(args.interval)


# -- reload ---------------------------------------------------------------------------------------


def reload(args: argparse.Namespace) -> int:
    ep = endpoint(args)
    code, before = asyncio.run(client.call(ep, "GET", "/v1/status"))
    before_at = (before.get("reload") or {}).get("at") if code == 200 and isinstance(before, dict) else None
    code, answer = asyncio.run(client.call(ep, "POST", "/v1/reload", RELOAD_ANSWER_S))
    if code == 202:  # still running after the daemon's own wait: follow it, do not call it failed
        deadline = time.monotonic() + args.wait
        answer = None
        while time.monotonic() < deadline:
            time.sleep(POLL_S)
            code, doc = asyncio.run(client.call(ep, "GET", "/v1/status"))
            result = (doc.get("reload") or {}) if code == 200 and isinstance(doc, dict) else {}
            if result.get("at") and result.get("at") != before_at:
                answer, code = result, 200 if result.get("ok") else 422
                break
        if answer is None:
            doc = {"outcome": "running", "ok": None, "error": None, "at": None}
            if args.json:
                print_json(doc)
            print(
                f"the reload is still running in the daemon after {args.wait:g}s more; "
                "`ceres-supervisor status` shows its outcome when it ends",
                file=sys.stderr,
            )
            return exits.RUNNING
    if code == 422 and isinstance(answer, dict):
        if args.json:
            print_json(
                {"outcome": "refused", "ok": False, "error": answer.get("error"), "at": answer.get("at")}
            )
        print(
            f"reload refused, the daemon keeps its last good desired state:\n{answer.get('error')}",
            file=sys.stderr,
        )
        return exits.INVALID
    body = client.expect(code, answer, ep)
    if args.json:
        print_json({"outcome": "applied", "ok": True, "error": None, "at": body.get("at")})
    else:
        print("reload applied")
    return exits.OK


# -- pause and resume -----------------------------------------------------------------------------


def pause(args: argparse.Namespace) -> int:
    verb = args.command
    if bool(args.all) == bool(args.nodes):
        raise Failure(exits.USAGE, f"name the nodes to {verb}, or give --all")
    body: dict[str, Any] = {"who": "cli"}
    if args.nodes:
        body["nodes"] = list(dict.fromkeys(args.nodes))  # all of them at once, or none
    ep, code, answer = request(args, "POST", f"/v1/{verb}", body)
    doc = client.expect(code, answer, ep)
    if args.json:
        print_json(doc)
    else:
        what = (
            "the whole cluster" if doc.get("all") else ", ".join(map(exits.one_line, doc.get("nodes") or []))
        )
        print(f"{what}: {verb}d (holds on {exits.one_line(doc.get('holds_on'))})")
    return exits.OK


# -- planned and rolling restarts -----------------------------------------------------------------


def _follow(args: argparse.Namespace, ep: client.Endpoint, op_id: str) -> int:
    """Print the operation's steps as they come; Ctrl-C asks it to stop after the current node."""
    printed = 0
    cancelled = False
    path = f"/v1/operations/{quote(op_id)}"
    while True:
        try:
            code, answer = asyncio.run(client.call(ep, "GET", path))
            doc = client.expect(code, answer, ep)
            steps = doc.get("steps") or []
            if not args.json:
                for step in steps[printed:]:
                    print(f"{exits.one_line(step.get('at'))}  {exits.one_line(step.get('text'))}", flush=True)
            printed = len(steps)
            if doc.get("outcome") is not None:
                if args.json:
                    print_json(doc)
                elif doc.get("outcome") != "ok" and doc.get("error"):
                    print(f"error: {exits.one_line(doc['error'])}", file=sys.stderr)
                return exits.OK if doc.get("outcome") == "ok" else exits.NOT_OK
            time.sleep(POLL_S)  # the operation's pace is the cluster's; ask again
        except KeyboardInterrupt:
            if cancelled:
                print(f"\nleft it running; follow it with GET {path}", file=sys.stderr)
                return exits.INTERRUPTED
            cancelled = True
            print("\nstopping after the current node (Ctrl-C again to leave it running)", file=sys.stderr)
            asyncio.run(client.call(ep, "POST", f"{path}/cancel"))


def restart(args: argparse.Namespace) -> int:
    if args.command == "restart":
        path, body, asked = f"/v1/nodes/{quote(args.node, safe='')}/restart", {"who": "cli"}, [args.node]
    else:
        path, body, asked = "/v1/rolling-restart", {"who": "cli", "role": args.role}, []
    ep, code, answer = request(args, "POST", path, body)
    doc = client.expect(code, answer, ep, ok=(202,))
    op_id = str(doc.get("operation"))
    if args.no_wait:
        if args.json:
            print_json({"operation": op_id, "nodes": doc.get("nodes", asked)})
        else:
            print(f"operation {op_id}")
        return exits.OK
    if not args.json:
        nodes = doc.get("nodes")
        print(
            f"operation {op_id}" + (f": {', '.join(map(exits.one_line, nodes))}" if nodes else ""), flush=True
        )
    return _follow(args, ep, op_id)


# -- events, logs, describe -----------------------------------------------------------------------


def _event_key(event: dict[str, Any]) -> str:
    return json.dumps([event.get(k) for k in ("at", "agent", "node", "type", "reason", "message")])


def _raise_interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _take_ctrl_c() -> None:
    """For the commands that poll until Ctrl-C (`status --watch`, `events -f`, `logs -f`): Ctrl-C
    raises KeyboardInterrupt wherever it lands, also inside a poll's `asyncio.run`, which takes
    SIGINT over only from Python's own handler; so taken and given back at every poll, a Ctrl-C was
    now and then lost under load (the command went on)."""
    signal.signal(signal.SIGINT, _raise_interrupt)


def events(args: argparse.Namespace) -> int:
    if args.follow:
        _take_ctrl_c()
    since = parse_since(args.since)
    seen: dict[str, str] = {}
    last_at = since
    first = True
    while True:
        query = {"limit": str(args.limit if first else 10_000)}
        if args.node:
            query["node"] = args.node
        if last_at:
            query["since"] = last_at
        ep, code, answer = request(args, "GET", f"/v1/cluster/events?{urlencode(query)}", timeout_s=30.0)
        doc = client.expect(code, answer, ep)
        if first:
            missing = [a for a in doc.get("agents") or [] if isinstance(a, dict) and not a.get("ok")]
            for agent in missing:
                print(
                    f"note: no events from {exits.one_line(agent.get('host'))}: "
                    f"{exits.one_line(agent.get('error'))}",
                    file=sys.stderr,
                )
            if doc.get("complete") is False and not missing:
                print(
                    "note: the coordination store cannot be read: these are one supervisor's events",
                    file=sys.stderr,
                )
        for event in doc.get("events") or []:
            key = _event_key(event)
            if key in seen:
                continue  # asked again from the last time seen: already printed
            seen[key] = str(event.get("at") or "")
            last_at = max(last_at or "", seen[key])
            print_json(event, lines=True) if args.json else print(tables.event_line(event), flush=True)
        seen = {k: at for k, at in seen.items() if at == last_at}  # only the last instant can come again
        first = False
        if not args.follow:
            return exits.OK
        time.sleep(POLL_S)


def _log_lines(args: argparse.Namespace, since: str | None, lines: int) -> Iterator[dict[str, Any]]:
    query = {"lines": str(lines), **({"since": since} if since else {})}
    ep, code, answer = request(
        args, "GET", f"/v1/nodes/{quote(args.node, safe='')}/logs?{urlencode(query)}", timeout_s=30.0
    )
    doc = client.expect(code, answer, ep)
    for line in doc.get("lines") or []:
        if isinstance(line, dict):
            yield {"at": line.get("at"), "node": doc.get("node"), "text": line.get("text")}


def _nanos(at: object) -> tuple[str, int]:
    """Docker's RFC 3339 timestamp as (seconds part, nanoseconds): Docker trims trailing zeros, so
    the text alone does not sort."""
    text = str(at or "")
    head, _, frac = text.rstrip("Z").partition(".")
    return head, int((frac + "000000000")[:9]) if frac.isdigit() else 0


def logs(args: argparse.Namespace) -> int:
    if args.follow:
        _take_ctrl_c()
    since = parse_since(args.since)
    newest: tuple[str, int] | None = None
    at_newest: set[str] = set()
    lines = args.lines
    while True:
        for line in _log_lines(args, since, lines):
            stamp = _nanos(line["at"])
            if newest is not None and (stamp < newest or (stamp == newest and line["text"] in at_newest)):
                continue  # asked again from the last second seen: already printed
            if newest is None or stamp > newest:
                newest, at_newest = stamp, set()
            at_newest.add(str(line["text"]))
            print_json(line, lines=True) if args.json else print(line["text"], flush=True)
        if not args.follow:
            return exits.OK
        if newest is not None:
            since = f"{newest[0]}Z"  # whole seconds: Docker's `since` granularity; repeats are skipped
        lines = 10_000
        time.sleep(POLL_S)


def describe(args: argparse.Namespace) -> int:
    ep, code, answer = request(args, "GET", f"/v1/nodes/{quote(args.node, safe='')}/describe", timeout_s=30.0)
    doc = client.expect(code, answer, ep)
    if args.json:
        print_json(doc)
    else:
        print(tables.describe(doc), flush=True)
    return exits.OK
