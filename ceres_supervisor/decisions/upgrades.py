"""Upgrades: which release pairs can be upgraded, and how; the steps of one, in order. Pure.

The pair table (README "Upgrading"; the facts in docs/real-servers.md section 12):

- ceresdb 1.2.2, 1.2.4, 1.2.5, 1.2.6 among themselves, either way: meta member by member (the same
  leader key, health route, HTTP port key and service: deduction), CeresDB node by node (the same
  service names and on-disk layout: deduction);
- ceresdb 1.2.2-1.2.6 <-> 1.2.7: meta all members together (the leader key moves from
  `/members/leader` to `<root>/members/leader`: members of the two versions never see one
  leader), CeresDB node by node;
- ceresdb 1.2.7 -> horaedb 2.0.0 with `cluster.keep_ceresdb_data`: meta all together first, then
  every CeresDB node together (1.x and 2.x speak different meta services: they never run mixed);
- ceresdb 1.2.2-1.2.6 -> horaedb 2.0.0: refused, ceresdb 1.2.7 first (a required step);
  horaedb -> ceresdb: refused (no way back from 2.x).

A rolling role goes one node at a time: the nodes that are down first (they serve nothing; the
budget would hold every other one back while they are down), then the meta followers and the
leader last (CeresDB in file order). Going back is the same path with the version edited back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from ceres_supervisor.model.versions import V1_2_7, Release, parse_release, version_text

Mode = Literal["rolling", "together"]

LAST_1X: Final = V1_2_7
"""The last CeresDB 1.x release, the one HoraeDB 2.0.0 takes a cluster over from: v1.2.7 is the 1.x
tag that v2.0.0 descends from, and the recipe of horaedb 1a452f2c (#1455) was written against it."""

META_MIX: Final = (
    "CeresMeta 1.2.2, 1.2.4, 1.2.5 and 1.2.6 share the leader key, health route, HTTP port key and "
    "service: they mix member by member (deduction)"
)
META_KEY_MOVED: Final = (
    "the leader key moves at 1.2.7 (/members/leader up to 1.2.6, <root>/members/leader from 1.2.7): "
    "members of the two versions never see one leader, so all members go together"
)
META_2X: Final = (
    "HoraeMeta 2.x serves meta_service.MetaRpcService, CeresMeta 1.x CeresmetaRpcService: the two never "
    "run together, so all members go together, first"
)
DB_ROLLING: Final = (
    "CeresDB 1.2.x keeps its service names and on-disk layout: node by node, each flushed and back with "
    "its shards before the next (deduction: no source says the formats are compatible; none contradicts it)"
)
DB_2X: Final = (
    "a 1.x node cannot talk to 2.x meta (its heartbeats fail; one that starts exits 1), nor a 2.x node to "
    "1.x meta: 1.x and 2.x never run mixed, so every node goes together, once meta is 2.x"
)
NO_META_DOWNTIME: Final = (
    "none expected: one member at a time, etcd keeps its quorum; when the leader goes, its leader key is "
    "revoked at its stop and another member takes over within seconds"
)
TOGETHER_DOWNTIME: Final = (
    "meta is down from the stop of its members until the new ones have elected a leader that lists the "
    "cluster (an etcd election and CeresMeta's campaign: seconds; the upgrade halts past start_timeout); "
    "CeresDB nodes are `blocked` meanwhile, never restarted for it"
)


@dataclass(frozen=True)
class Pair:
    """How to go from one release to another: per role, rolling, together, or None (no change)."""

    meta: Mode | None
    ceresdb: Mode | None
    meta_why: str = ""
    ceresdb_why: str = ""
    refused: str | None = None


def pair(source: Release, target: Release) -> Pair:
    """The pair table of the module docstring. `target.keeps_ceresdb_data` is the file's key."""
    if source.same_servers(target):
        return Pair(None, None)
    src, dst = source.label(), target.label()
    if source.flavor == "horaedb" and target.flavor == "ceresdb":
        return Pair(
            None,
            None,
            refused=(
                f"{src} -> {dst}: no way back from HoraeDB 2.x to CeresDB 1.x (the 1.x servers call "
                "CeresmetaRpcService, which 2.x meta does not serve; nothing says 1.x reads what 2.x wrote)"
            ),
        )
    if source.flavor == "ceresdb" and target.flavor == "horaedb":
        if not target.keeps_ceresdb_data:
            return Pair(
                None,
                None,
                refused=(
                    f"{src} -> {dst} needs cluster.keep_ceresdb_data = true: without it HoraeDB uses the "
                    "root /horaedb and catalog horaedb, and the cluster comes up empty, every 1.x table "
                    "invisible (horaedb 1a452f2c, #1455)"
                ),
            )
        if source.version != LAST_1X:
            return Pair(
                None,
                None,
                refused=(
                    f"{src} -> {dst} skips a required step: upgrade to ceresdb {version_text(LAST_1X)} first "
                    "(HoraeDB 2.0.0 takes a cluster over from the last 1.x release, which it descends from; "
                    f"{src} -> ceresdb {version_text(LAST_1X)} is a step of its own)"
                ),
            )
        return Pair("together", "together", META_2X, DB_2X)
    # The same flavor: CeresDB 1.2.x both ways (HoraeDB has one known release).
    crosses = (source.version < V1_2_7) != (target.version < V1_2_7)
    return Pair(
        "together" if crosses else "rolling",
        "rolling",
        META_KEY_MOVED if crosses else META_MIX,
        DB_ROLLING,
    )


@dataclass(frozen=True)
class Member:
    """A node as the upgrade sees it: what its container runs now."""

    name: str
    role: str
    release: Release | None
    """The release its container runs; None: no container (the planner creates it at the target)."""
    known: bool = True
    """False when nobody can say (another machine's node whose supervisor does not publish it)."""
    down: bool = False
    """Not serving now (not healthy, or without its shards): it goes first in a rolling role."""


@dataclass(frozen=True)
class Step:
    role: str
    nodes: tuple[str, ...]
    together: bool
    why: str

    def describe(self) -> str:
        how = "all together" if self.together else "one at a time"
        return f"{', '.join(self.nodes)} ({self.role}, {how}): {self.why}"


@dataclass(frozen=True)
class Upgrade:
    """What is left of an upgrade to `target`, as the containers stand."""

    target: Release
    sources: tuple[Release, ...] = ()
    """The other releases the containers run (more than one in the middle of an upgrade)."""
    steps: tuple[Step, ...] = ()
    """What remains, in order."""
    done: tuple[str, ...] = ()
    """Nodes that run the target already."""
    unknown: tuple[str, ...] = ()
    """Nodes nobody can tell the release of now: the upgrade waits for them."""
    refused: str | None = None
    meta_downtime: str = ""
    pairs: Mapping[str, Pair] = field(default_factory=dict)
    """source label -> its pair with the target."""

    @property
    def pending(self) -> bool:
        """Some container runs another release than the file's."""
        return bool(self.sources)

    @property
    def next_step(self) -> Step | None:
        return self.steps[0] if self.steps else None


def _rolling(role: str, members: Sequence[Member], leader: str | None, why: str) -> list[Step]:
    down = [m.name for m in members if m.down]
    followers = [m.name for m in members if not m.down and m.name != leader]
    last = [m.name for m in members if not m.down and m.name == leader]
    return [Step(role, (name,), False, why) for name in down + followers + last]


def assess(target: Release, members: Sequence[Member], leader: str | None) -> Upgrade:
    """The remaining steps of the upgrade to `target` (meta first, then CeresDB; see the module
    docstring), from what each node's container runs. No upgrade is pending when every container
    runs the target's servers (a container whose release cannot be told is not part of one)."""
    outdated = [
        m for m in members if m.known and m.release is not None and not m.release.same_servers(target)
    ]
    done = tuple(
        m.name
        for m in members
        if m.known and m.release is not None and m.name not in {o.name for o in outdated}
    )
    unknown = tuple(m.name for m in members if not m.known)
    sources: list[Release] = []
    for m in outdated:
        assert m.release is not None
        if not any(s.same_servers(m.release) for s in sources):
            sources.append(m.release)
    if not outdated:
        return Upgrade(target, done=done, unknown=unknown)
    pairs = {s.label(): pair(s, target) for s in sources}
    refusals = [p.refused for p in pairs.values() if p.refused]
    if refusals:
        return Upgrade(target, tuple(sources), (), done, unknown, refusals[0], "", pairs)

    def mode(role: str) -> tuple[Mode | None, str]:
        chosen: tuple[Mode | None, str] = (None, "")
        for m in outdated:
            if m.role != role or m.release is None:
                continue
            p = pairs[m.release.label()]
            how, why = (p.meta, p.meta_why) if role == "meta" else (p.ceresdb, p.ceresdb_why)
            if how == "together" or chosen[0] is None:
                chosen = (how, why)
        return chosen

    steps: list[Step] = []
    downtime = ""
    for role in ("meta", "ceresdb"):
        group = [m for m in outdated if m.role == role]
        if not group:
            continue
        how, why = mode(role)
        if how == "together":
            steps.append(Step(role, tuple(m.name for m in group), True, why))
        else:
            steps += _rolling(role, group, leader if role == "meta" else None, why)
        if role == "meta":
            downtime = TOGETHER_DOWNTIME if how == "together" else NO_META_DOWNTIME
    if not downtime:
        downtime = "none: meta already runs the target"
    return Upgrade(target, tuple(sources), tuple(steps), done, unknown, None, downtime, pairs)


def going_back(upgrade: Upgrade) -> str:
    """What an operator does to undo a halted upgrade: the same path, the version edited back; from
    HoraeDB 2.x there is no way back through the file."""
    if not upgrade.sources:
        return ""
    if upgrade.target.flavor == "horaedb" and all(s.flavor == "ceresdb" for s in upgrade.sources):
        return (
            "there is no way back from 2.x through the file: stop the cluster and restore the backup of meta "
            "taken before the upgrade (ceres-supervisor restore), the file back at the 1.x release"
        )
    back = " / ".join(s.label() for s in upgrade.sources)
    return (
        f"to go back, set cluster.version back to {back} in the file on every machine and reload: "
        "the same path, in the same order (a node that is down goes first)"
    )


# --- the preflight: does every machine have the file's images? ----------------------------------


@dataclass(frozen=True)
class Preflight:
    """One agent's check of its own Docker Engine for the images of its nodes, for one file (before
    an upgrade stops anything). Published in its `agents/<host>` record."""

    spec_hash: str
    images: tuple[str, ...]
    missing: tuple[str, ...] = ()
    errors: Mapping[str, str] = field(default_factory=dict)
    """image -> why it could not be checked or pulled."""
    checked_at: str = ""

    @property
    def ok(self) -> bool:
        return not self.missing

    def document(self) -> dict[str, object]:
        return {
            "spec_hash": self.spec_hash,
            "images": list(self.images),
            "missing": list(self.missing),
            "errors": dict(self.errors),
            "checked_at": self.checked_at,
        }

    @classmethod
    def parse(cls, doc: object) -> Preflight | None:
        """A published preflight, or None when it is not one (an older agent publishes none)."""
        if not isinstance(doc, dict):
            return None
        spec_hash, images, missing = doc.get("spec_hash"), doc.get("images"), doc.get("missing")
        errors = doc.get("errors") or {}
        lists = (images, missing)
        if not isinstance(spec_hash, str) or not all(
            isinstance(v, list) and all(isinstance(x, str) for x in v) for v in lists
        ):
            return None
        if not isinstance(errors, dict) or not all(isinstance(v, str) for v in errors.values()):
            return None
        assert isinstance(images, list) and isinstance(missing, list)
        return cls(spec_hash, tuple(images), tuple(missing), dict(errors), str(doc.get("checked_at") or ""))

    def says(self) -> str:
        """`lacks img (pull failed: ...)`, for a person."""
        parts = [
            f"{image} ({self.errors[image]})" if image in self.errors else image for image in self.missing
        ]
        return "lacks " + ", ".join(parts)


def images_missing(spec_hash: str, checks: Mapping[str, Preflight | None]) -> str | None:
    """Which machine lacks which image of the file `spec_hash`, from every agent's check (host ->
    its preflight, None when it published none); None when no check that is known says so."""
    said = [
        f"{host} {check.says()}"
        for host, check in sorted(checks.items())
        if check is not None and check.spec_hash == spec_hash and not check.ok
    ]
    return "; ".join(said) or None


def images_confirmed(spec_hash: str, checks: Mapping[str, Preflight | None]) -> tuple[bool, str]:
    """(every machine has said it has every image of `spec_hash`, what is still awaited or missing)."""
    missing = images_missing(spec_hash, checks)
    if missing is not None:
        return False, missing
    waiting = sorted(host for host, check in checks.items() if check is None or check.spec_hash != spec_hash)
    if waiting:
        return False, f"waiting for {', '.join(waiting)} to check its images"
    return True, "every machine has the images"


# --- probing meta as it runs, not as the file says -----------------------------------------------


def probed_as(target: Release, running: Mapping[str, str], meta: Sequence[str]) -> tuple[dict[str, str], str]:
    """(meta member -> its health route, when its container runs another release than the file's;
    the leader key to read). In an upgrade meta runs the release it ran until its step is done, and
    1.2.6 -> 1.2.7 moves both: the leader key is the one of the release every member runs (the
    file's when they differ, in the middle of an all-together step)."""
    releases = {}
    for name in meta:
        found = parse_release(running.get(name, ""))
        if found is not None:
            # A 1.x release keeps /ceresdb; a 2.x one on 1.x data keeps it too (the file's setting).
            releases[name] = Release(found.flavor, found.version, target.keeps_ceresdb_data)
    paths = {
        name: r.meta_health_path
        for name, r in releases.items()
        if not r.same_servers(target) and r.meta_health_path != target.meta_health_path
    }
    distinct = {(r.flavor, r.version) for r in releases.values()}
    leader = target.meta_leader_key
    if len(distinct) == 1 and len(releases) == len(meta):
        leader = next(iter(releases.values())).meta_leader_key
    return paths, leader
