"""What each node's container must look like: the desired side of every reconcile decision.

`build` turns a validated spec into one `DesiredNode` per node: its rendered config (secrets
resolved, because the hash must change when a secret does), the container to run, and the
spec-hash that tells an adopted container from one that must be recreated. Reading secrets is
the only I/O here, through the injected resolver; which hosts are this machine's is decided once,
elsewhere (`locality`), and passed in.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from ceres_supervisor.desired import rendering
from ceres_supervisor.model.spec import DesiredState, SecretRef, nodes

LABEL_PREFIX: Final = "io.ceres-supervisor"
LABEL_MANAGED: Final = f"{LABEL_PREFIX}.managed"
LABEL_CLUSTER: Final = f"{LABEL_PREFIX}.cluster"
LABEL_NODE: Final = f"{LABEL_PREFIX}.node"
LABEL_ROLE: Final = f"{LABEL_PREFIX}.role"
LABEL_HASH: Final = f"{LABEL_PREFIX}.spec-hash"
LABEL_HOST: Final = f"{LABEL_PREFIX}.host"
LABEL_RELEASE: Final = f"{LABEL_PREFIX}.release"
"""The release the container was made for (`ceresdb 1.2.4`): what an upgrade starts from."""

Role = Literal["meta", "ceresdb"]


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool


@dataclass(frozen=True)
class ContainerSpec:
    """Everything `engine` needs to create the container, and nothing else."""

    name: str
    image: str
    env: dict[str, str]
    mounts: tuple[Mount, ...]
    labels: dict[str, str]
    network_mode: str = "host"
    log_max_size: str = "20m"
    """Docker's json-file rotation (`[supervisor] log_max_size`, `log_max_files`); outside the
    spec hash: a changed setting applies to containers created from then on, and restarts none."""
    log_max_files: int = 5


@dataclass(frozen=True)
class DesiredNode:
    name: str
    role: Role
    host: str
    ports: dict[str, int]
    is_local: bool
    """False for nodes whose `host` is another machine: started by the supervisor there."""
    config_path: Path
    """Where the rendered config is written on this machine (mounted read-only)."""
    config_text: bytes
    """The rendered config with secrets resolved (written with mode 0600 when `has_secret`)."""
    has_secret: bool
    data_dir: Path
    container: ContainerSpec
    spec_hash: str

    @property
    def endpoint(self) -> str:
        """CeresDB's identity in meta and in its shard locks: `host:grpc_port`."""
        return f"{self.host}:{self.ports.get('grpc', 0)}"


@dataclass(frozen=True)
class DesiredCluster:
    spec: DesiredState
    nodes: tuple[DesiredNode, ...]
    spec_hash: str
    """Hash over every node's spec-hash: changes when any container would."""

    def node(self, name: str) -> DesiredNode | None:
        return next((n for n in self.nodes if n.name == name), None)

    @property
    def meta(self) -> tuple[DesiredNode, ...]:
        return tuple(n for n in self.nodes if n.role == "meta")

    @property
    def ceresdb(self) -> tuple[DesiredNode, ...]:
        return tuple(n for n in self.nodes if n.role == "ceresdb")


def container_name(cluster: str, node: str) -> str:
    return f"ceres-{cluster}-{node}"


def _hash(payload: object) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def build(
    spec: DesiredState,
    resolve: Callable[[SecretRef], str],
    is_local: Callable[[str], bool],
) -> DesiredCluster:
    """One DesiredNode per node, meta first. Raises SecretError if a secret cannot be read."""
    state_dir = Path(spec.cluster.state_dir)
    refs = {r.name: r for r in nodes(spec)}
    result = []
    for node in rendering.render(spec):
        config_path = state_dir / "config" / node.name / node.config_name
        data_dir = state_dir / "data" / node.name
        text = rendering.to_toml(rendering.materialize(node.document, resolve)).encode()
        image = spec.meta.image if node.role == "meta" else spec.ceresdb.image
        mounts = (
            Mount(str(config_path), node.config_mount, read_only=True),
            Mount(str(data_dir), node.data_mount, read_only=False),
        )
        ports = refs[node.name].ports
        # The hash covers what a running container cannot change without being recreated: not the
        # keys meta reads only when it creates the cluster (a node added in dynamic topology).
        lasting = {k: v for k, v in node.document.items() if k not in rendering.CREATION_ONLY}
        hashed = rendering.to_toml(rendering.materialize(lasting, resolve)).encode()
        spec_hash = _hash(
            {
                "image": image,
                "config": hashlib.sha256(hashed).hexdigest(),
                "env": node.env,
                "mounts": [m.__dict__ for m in mounts],
                "ports": ports,
                "network": spec.cluster.network,
            }
        )
        labels = {
            LABEL_MANAGED: "true",
            LABEL_CLUSTER: spec.cluster.name,
            LABEL_NODE: node.name,
            LABEL_ROLE: node.role,
            LABEL_HASH: spec_hash,
            LABEL_HOST: node.host,
            LABEL_RELEASE: spec.release.label(),
        }
        container = ContainerSpec(
            name=container_name(spec.cluster.name, node.name),
            image=image,
            env=dict(node.env),
            mounts=mounts,
            labels=labels,
            network_mode=spec.cluster.network,
            log_max_size=spec.supervisor.log_max_size,
            log_max_files=spec.supervisor.log_max_files,
        )
        result.append(
            DesiredNode(
                name=node.name,
                role=node.role,
                host=node.host,
                ports=ports,
                is_local=is_local(node.host),
                config_path=config_path,
                config_text=text,
                has_secret=node.has_secret,
                data_dir=data_dir,
                container=container,
                spec_hash=spec_hash,
            )
        )
    return DesiredCluster(spec=spec, nodes=tuple(result), spec_hash=_hash([n.spec_hash for n in result]))
