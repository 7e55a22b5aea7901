"""Build the CeresMeta / CeresDB stand-in images locally, with no registry.

    python testkit/emulator.py [VERSION ...]      (default 1.2.2; `make emulator VERSIONS=...`)

1. A Debian bookworm rootfs from mmdebstrap (reads this machine's apt sources), imported with
   `docker import` as ceres-emulator/rootfs:<recipe hash>; built once per recipe.
2. Per version, ceres-emulator/ceresmeta-server:<v> and ceres-emulator/ceresdb-server:<v>
   (horaemeta-server / horaedb-server from 2.0.0): the rootfs plus image/*.py (and
   ceres_supervisor/desired/serverschema.py when it exists, next to them), labelled with the hash of those
   sources. An image whose label matches is left alone, so a second run does nothing.

CERES_EMULATOR_REPOSITORY=<name> builds the server images as <name>/...:<v> instead (the rootfs
stays shared): for working on the stand-ins without replacing the images other test runs use.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import docker
import docker.errors

ROOT = Path(__file__).resolve().parents[1]
IMAGE_DIR = ROOT / "tests" / "emulator" / "image"
"""The stand-ins' sources: what runs inside the images."""
SERVERSCHEMA = ROOT / "ceres_supervisor" / "desired" / "serverschema.py"
"""The supervisor's model of the servers' configuration; the stand-ins parse with it if present."""
ROOTFS_REPOSITORY = "ceres-emulator"
REPOSITORY = os.environ.get("CERES_EMULATOR_REPOSITORY") or ROOTFS_REPOSITORY
HASH_LABEL = "io.ceres-emulator.source-hash"
DEFAULT_VERSIONS = ["1.2.2"]
MMDEBSTRAP_ARGS = [
    "--variant=essential",
    "--include=python3-minimal,libpython3.11-stdlib,etcd-server",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
    "--dpkgopt=path-exclude=/usr/share/info/*",
    "bookworm",
]


def say(message: str) -> None:
    print(f"emulator: {message}", file=sys.stderr, flush=True)


def digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:16]


def image_sources() -> list[tuple[str, bytes]]:
    """(name in the image, content) of every Python file the stand-ins run."""
    sources = [(f.name, f.read_bytes()) for f in sorted(IMAGE_DIR.glob("*.py"))]
    if SERVERSCHEMA.is_file():
        sources.append((SERVERSCHEMA.name, SERVERSCHEMA.read_bytes()))
    return sources


def source_hash() -> str:
    return digest(Path(__file__).read_bytes(), *(name.encode() + data for name, data in image_sources()))


def image_names(version: str) -> dict[str, str]:
    v2 = int(version.split(".", maxsplit=1)[0]) >= 2
    meta, db = ("horaemeta-server", "horaedb-server") if v2 else ("ceresmeta-server", "ceresdb-server")
    return {"meta": f"{REPOSITORY}/{meta}:{version}", "db": f"{REPOSITORY}/{db}:{version}"}


def config_paths(version: str) -> dict[str, str]:
    if int(version.split(".", maxsplit=1)[0]) >= 2:
        return {"meta": "/etc/horaemeta/horaemeta.toml", "db": "/etc/horaedb/horaedb.toml"}
    return {"meta": "/etc/ceresmeta/ceresmeta.toml", "db": "/etc/ceresdb/ceresdb.toml"}


def ensure_mmdebstrap() -> None:
    if shutil.which("mmdebstrap"):
        return
    if os.geteuid() == 0 and Path("/etc/debian_version").exists():
        say("installing mmdebstrap from Debian's packages")
        subprocess.run(["apt-get", "update", "-q"], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", "mmdebstrap"],
            check=True,
            stdout=subprocess.DEVNULL,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
        return
    sys.exit("emulator: mmdebstrap is missing; install it (Debian: apt-get install mmdebstrap) and retry")


def ensure_rootfs(
    client: docker.DockerClient, args: list[str] = MMDEBSTRAP_ARGS, name: str = "rootfs"
) -> str:
    """A Debian rootfs from mmdebstrap, imported once per recipe as ceres-emulator/<name>:<hash>."""
    tag = f"{ROOTFS_REPOSITORY}/{name}:{digest(json.dumps(args).encode())}"
    try:
        client.images.get(tag)
        return tag
    except docker.errors.ImageNotFound:
        pass
    ensure_mmdebstrap()
    say(f"building {name} with mmdebstrap ({' '.join(args)})")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ceres-emulator-") as tmp:
        tarball = Path(tmp) / "rootfs.tar"
        subprocess.run(["mmdebstrap", "--quiet", *args, str(tarball)], check=True)
        repository, version = tag.split(":")
        client.api.import_image(src=str(tarball), repository=repository, tag=version)
    say(f"imported {tag} in {time.monotonic() - started:.1f}s")
    return tag


SYSTEMD_ARGS = [
    "--variant=minbase",
    "--include=systemd,systemd-sysv,dbus,procps",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
    "bookworm",
]


def ensure_systemd_image(client: docker.DockerClient) -> str:
    """A Debian rootfs with systemd, to boot as PID 1 in a container (the systemd tests)."""
    return ensure_rootfs(client, SYSTEMD_ARGS, "systemd")


def build_context(base: str, role: str, version: str, hashed: str) -> bytes:
    entry = "meta.py" if role == "meta" else "db.py"
    dockerfile = "\n".join(
        [
            f"FROM {base}",
            "COPY emulator/ /opt/ceres-emulator/",
            "COPY ceres-emulator-fault /usr/local/bin/ceres-emulator-fault",
            f'LABEL {HASH_LABEL}="{hashed}" io.ceres-emulator.version="{version}" io.ceres-emulator.role="{role}"',
            # The real images: /tini -- /entrypoint.sh -> exec <server> --config <path>.
            f'ENTRYPOINT ["/usr/bin/python3", "-u", "/opt/ceres-emulator/{entry}", "--config", "{config_paths(version)[role]}"]',
            "",
        ]
    )
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:

        def add(name: str, data: bytes, mode: int = 0o644) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 0
            tar.addfile(info, io.BytesIO(data))

        add("Dockerfile", dockerfile.encode())
        for name, data in image_sources():
            add(f"emulator/{name}", data)
        add("emulator/VERSION", f"{version}\n".encode())
        add("ceres-emulator-fault", (IMAGE_DIR / "fault.py").read_bytes(), 0o755)
    return buffer.getvalue()


def main(versions: list[str]) -> int:
    client = docker.from_env(timeout=600)
    hashed = source_hash()
    todo = []
    for version in versions:
        for role, name in image_names(version).items():
            try:
                if client.images.get(name).labels.get(HASH_LABEL) == hashed:
                    continue
            except docker.errors.ImageNotFound:
                pass
            todo.append((version, role, name))
    if not todo:
        say(f"images up to date ({', '.join(versions)}, sources {hashed})")
        return 0
    base = ensure_rootfs(client)
    for version, role, name in todo:
        context = build_context(base, role, version, hashed)
        client.images.build(fileobj=io.BytesIO(context), custom_context=True, tag=name, rm=True, pull=False)
        say(f"built {name} (sources {hashed})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or DEFAULT_VERSIONS))
