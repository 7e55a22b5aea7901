"""Reading a desired-state file: TOML, models, rules, secrets. Errors name their key path.

`load` is what `validate`, `render`, `run` and every reload call; it either returns a usable
spec (with warnings) or raises `DesiredStateError` carrying every problem found, never a
traceback and never a secret value.
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pydantic

from ceres_supervisor.desired import rules, secrets
from ceres_supervisor.model import addresses, spec
from ceres_supervisor.model.errors import DesiredStateError, Problem

_MESSAGES = {
    "extra_forbidden": "unknown key",
    "missing": "required key is missing",
}


@dataclass(frozen=True)
class Loaded:
    spec: spec.DesiredState
    warnings: list[Problem]
    source: str
    digest: str
    """sha256 of the file's bytes: lets a reload tell "unchanged" from "changed"."""


def dotted(loc: tuple[int | str, ...]) -> str:
    """('ceresdb', 'nodes', 1, 'grpc_port') -> 'ceresdb.nodes[1].grpc_port'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith(("function-", "tagged-union[")) or part in ("str", "SecretRef"):
            continue  # validator and union-member names pydantic puts in the path
        else:
            segment = spec.key_segment(part)
            out += f".{segment}" if out else segment
    return out


def _type_name(value: object) -> str:
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "a boolean",
        list: "an array",
        dict: "a table",
    }
    return names.get(type(value), type(value).__name__)


def _problems_from(err: pydantic.ValidationError) -> list[Problem]:
    problems: list[Problem] = []
    seen: set[tuple[str, str]] = set()
    for item in err.errors(include_url=False, include_input=True):
        message = _MESSAGES.get(item["type"], item["msg"])
        message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if item["type"].endswith("_type") and "input" in item:
            # Name the type that was given, never its value (it may be a secret).
            message = f"{message[0].lower()}{message[1:]} (got {_type_name(item['input'])})"
        if "instance of SecretRef" in message:
            message = (
                f'must be a string or a secret reference {{ env = "NAME" }} / '
                f'{{ file = "/path" }} (got {_type_name(item.get("input"))})'
            )
        path = dotted(tuple(item["loc"]))
        if (path, message) not in seen:
            seen.add((path, message))
            problems.append(Problem(path, message))
    return _drop_union_noise(problems)


def _drop_union_noise(problems: list[Problem]) -> list[Problem]:
    """A value that fits neither `str` nor a secret table yields one error per union member;
    keep the secret-table one when it exists (it says what a table must look like)."""
    by_path: dict[str, list[Problem]] = {}
    for p in problems:
        by_path.setdefault(p.path, []).append(p)
    kept: list[Problem] = []
    for p in problems:
        group = by_path[p.path]
        if len(group) > 1 and "valid string" in p.message:
            continue
        kept.append(p)
    return kept


def parse(text: str, source: str) -> dict[str, Any]:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise DesiredStateError(source, [Problem("", f"TOML syntax error: {err}")]) from None
    except RecursionError:  # Python's TOML parser recurses once per nested array or inline table
        raise DesiredStateError(
            source, [Problem("", "TOML nested too deeply to be a desired-state file")]
        ) from None
    if not document:
        raise DesiredStateError(
            source,
            [Problem("", "the file is empty: it must declare at least [[meta.nodes]] and [[ceresdb.nodes]]")],
        )
    return document


def validate(document: dict[str, Any], source: str, digest: str = "") -> Loaded:
    try:
        desired = spec.DesiredState.model_validate(document)
    except pydantic.ValidationError as err:
        raise DesiredStateError(source, _problems_from(err)) from None
    findings = rules.check(desired)
    errors = findings.errors + secrets.check_available(desired)
    if errors:
        raise DesiredStateError(source, errors)
    return Loaded(desired, findings.warnings, source, digest)


def load(path: str | Path) -> Loaded:
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        raise DesiredStateError(
            source, [Problem("", f"cannot read the file: {err.strerror or err}")]
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DesiredStateError(source, [Problem("", "the file is not UTF-8 text")]) from None
    return validate(parse(text, source), source, hashlib.sha256(raw).hexdigest())


def with_listen(loaded: Loaded, listen: str | None) -> Loaded:
    """`run --listen ADDR`: this agent's API address instead of the file's (several agents sharing
    one machine and one file). Raises DesiredStateError when ADDR is not an address."""
    if listen is None:
        return loaded
    try:
        addresses.parse_listen(listen)
    except ValueError as err:
        raise DesiredStateError(loaded.source, [Problem("--listen", str(err))]) from None
    supervisor = loaded.spec.supervisor.model_copy(update={"listen": listen})
    return replace(loaded, spec=loaded.spec.model_copy(update={"supervisor": supervisor}))
