"""Writing rendered files: atomically (temporary file, fsync, rename, fsync of the directory).

A file that holds a secret is created with mode 0600 from its first byte; others get 0644.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from ceres_supervisor.desired import rendering
from ceres_supervisor.model.spec import SecretRef

SECRET_MODE = 0o600
PLAIN_MODE = 0o644


def write_atomic(path: Path, data: bytes, mode: int) -> bool:
    """Replace `path` with `data`. Returns False (and writes nothing) when it already holds them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        if path.read_bytes() == data and (path.stat().st_mode & 0o777) == mode:
            return False
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return True


def write_node(
    directory: Path, node: rendering.RenderedNode, resolve: Callable[[SecretRef], str]
) -> list[Path]:
    """Write `<directory>/<config_name>` and `<directory>/env`; return both paths."""
    config = directory / node.config_name
    text = rendering.to_toml(rendering.materialize(node.document, resolve))
    write_atomic(config, text.encode(), SECRET_MODE if node.has_secret else PLAIN_MODE)
    env = directory / "env"
    write_atomic(env, rendering.env_text(node.env).encode(), PLAIN_MODE)
    return [config, env]
