from __future__ import annotations

from pathlib import Path

import pytest

BASE = """
[cluster]
state_dir = "/var/lib/ceres-supervisor"

[[meta.nodes]]
name = "meta0"
host = "127.0.0.1"

[[ceresdb.nodes]]
name = "db0"
host = "127.0.0.1"

[[ceresdb.nodes]]
name = "db1"
host = "127.0.0.1"
grpc_port = 8832
http_port = 5441
mysql_port = 3308
"""


@pytest.fixture
def write(tmp_path: Path):
    """Write TOML text to a file and return its path."""

    def _write(text: str, name: str = "cluster.toml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return _write
