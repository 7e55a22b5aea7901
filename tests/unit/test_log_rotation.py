"""Container log rotation: `[supervisor] log_max_size` and `log_max_files` reach the container
spec the engine creates from, and stay out of the spec hash (changing them recreates nothing)."""

from __future__ import annotations

from pathlib import Path

from ceres_supervisor.desired import containers, loading

from .conftest import BASE


def build(tmp_path: Path, supervisor: str = "") -> containers.DesiredCluster:
    path = tmp_path / "cluster.toml"
    path.write_text(BASE + ("\n[supervisor]\n" + supervisor if supervisor else ""))
    return containers.build(loading.load(path).spec, lambda _ref: "", lambda _host: True)


def test_the_defaults_rotate_at_20m_keeping_5_files(tmp_path: Path) -> None:
    for node in build(tmp_path).nodes:
        assert (node.container.log_max_size, node.container.log_max_files) == ("20m", 5)


def test_the_settings_reach_every_container_and_leave_the_hash_alone(tmp_path: Path) -> None:
    default = build(tmp_path)
    changed = build(tmp_path, 'log_max_size = "512k"\nlog_max_files = 2\n')
    for node in changed.nodes:
        assert (node.container.log_max_size, node.container.log_max_files) == ("512k", 2)
    assert [n.spec_hash for n in changed.nodes] == [n.spec_hash for n in default.nodes]
    assert changed.spec_hash == default.spec_hash
