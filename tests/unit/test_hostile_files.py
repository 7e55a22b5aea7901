"""Hostile desired-state files, generated and mutated: valid, or exit 2 with a key path. Never a
traceback, never rendered when invalid."""

from __future__ import annotations

import contextlib
import copy
import io
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ceres_supervisor.cli import commands

from .conftest import BASE

BASE_DOC: dict[str, Any] = tomllib.loads(BASE)

# Only values TOML can hold (no None): every generated document is fed, none is skipped.
scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=30),
    st.sampled_from(
        [
            "5s",
            "500ms",
            "10m",
            "15s",
            "0s",
            "-1s",
            "1.5h",
            "s",
            "127.0.0.1:8831",
            "::1",
            "localhost",
            "unix:/x",
            "0.0.0.0:5480",
            "RocksDB",
            "Kafka",
            "S3",
            "horaedb",
            "2.0.0",
            "1.2.7",
            "v1.2.2",
        ]
    ),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(max_size=12), inner, max_size=4),
        st.fixed_dictionaries({"env": st.text(max_size=10)}),
        st.fixed_dictionaries({"file": st.text(max_size=20)}),
    ),
    max_leaves=8,
)
KEYS = [
    "cluster",
    "supervisor",
    "meta",
    "ceresdb",
    "nodes",
    "name",
    "host",
    "grpc_port",
    "http_port",
    "mysql_port",
    "client_port",
    "peer_port",
    "lease",
    "shard_lock_ttl",
    "wal",
    "object_store",
    "type",
    "config",
    "version",
    "flavor",
    "listen",
    "token_file",
    "probe_interval",
    "kafka",
    "client",
    "boost_broker",
    "boost_brokers",
    "postgresql_port",
    "image",
    "topology",
    "state_dir",
    "on_exit",
    "data_dir",
    "key_id",
    "region",
]


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def mutated(draw: st.DrawFn) -> Any:
    """The valid BASE with a few random edits: set, delete or retype a value, add a key."""
    doc: Any = copy.deepcopy(BASE_DOC)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        paths = _paths(doc)
        path = draw(st.sampled_from(paths))
        parent: Any = doc
        for part in path[:-1]:
            parent = parent[part]
        op = draw(st.sampled_from(["set", "delete", "add"]))
        if not path:
            continue
        key = path[-1]
        if op == "delete" and isinstance(parent, dict | list):
            del parent[key]
        elif op == "set":
            parent[key] = draw(values)
        elif isinstance(parent[key], dict):
            parent[key][draw(st.sampled_from(KEYS))] = draw(values)
    return doc


def run(command: str, text: str | bytes, root: Path) -> tuple[int, str, str]:
    path = root / "cluster.toml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    out, err = io.StringIO(), io.StringIO()
    args = [command, "-c", str(path)] + (["-o", str(root / "out")] if command == "render" else [])
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = commands.main(args)
    return code, out.getvalue(), err.getvalue()


def check(text: str | bytes) -> None:
    for command in ("validate", "render"):
        # Each example in a directory of its own, removed with everything in it afterwards.
        with tempfile.TemporaryDirectory(prefix="ceres-hostile-") as tmp:
            root = Path(tmp)
            code, out, err = run(command, text, root)
            assert code in (0, 2), (code, err)
            assert "Traceback" not in out + err
            if code == 2:
                lines = err.splitlines()
                assert lines and "invalid desired state" in lines[0], err
                # every problem line names a key path, or is about the file as a whole
                assert all(
                    line.startswith("  ") and (": " in line or "TOML" in line or "file" in line)
                    for line in lines[1:]
                ), err
                assert not (root / "out").exists()
            elif command == "render":
                for rendered in (root / "out").rglob("*.toml"):
                    tomllib.loads(rendered.read_text())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_files_are_valid_or_rejected_with_a_key_path(doc: Any) -> None:
    check(tomli_w.dumps(doc))  # every example is fed: the generator makes only TOML-representable documents


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_are_rejected_cleanly(data: bytes) -> None:
    check(data)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("[]=\"'{}.,#\n abc_0123456789ms")), max_size=200))
def test_toml_like_noise_is_rejected_cleanly(text: str) -> None:
    check(text)


@pytest.mark.parametrize("name", ["\u001e", "a\nb", "\x85", "\u2028"])
@pytest.mark.parametrize("kind", ["env", "file"])
def test_a_secret_reference_with_a_line_break_in_its_name_is_one_quoted_line(name: str, kind: str) -> None:
    """Found by Hypothesis: `{ env = "\u001e" }` printed raw split the problem over two lines."""
    doc = copy.deepcopy(BASE_DOC)
    doc["ceresdb"]["config"] = {
        "analytic": {"wal": {"data_dir": {kind: "/" + name if kind == "file" else name}}}
    }
    check(tomli_w.dumps(doc))
    with tempfile.TemporaryDirectory(prefix="ceres-hostile-") as tmp:
        code, _out, err = run("validate", tomli_w.dumps(doc), Path(tmp))
    assert code == 2
    assert err.splitlines()[1].endswith(("is not set", "No such file or directory")), err
    assert repr("/" + name if kind == "file" else name) in err


def test_a_deeply_nested_file_is_rejected_cleanly() -> None:
    check("x = " + "[" * 5000 + "]" * 5000 + "\n")


def test_no_example_directory_is_left_behind() -> None:
    before = set(Path(tempfile.gettempdir()).glob("ceres-hostile-*"))
    check("[cluster]\n")
    assert set(Path(tempfile.gettempdir()).glob("ceres-hostile-*")) == before
