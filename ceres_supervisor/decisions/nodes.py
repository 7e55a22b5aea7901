"""The first step of a planning pass: each node evaluated on its own. Pure.

`evaluate` gives a node's view (state and reason), its updated record, and what it wants: a
start, a create, or a stop by choice with the failure it counts. A remote node is only shown; an
exit is a failure unless the supervisor or the operator caused it; a running node is judged by its
probes and, for CeresDB, by the lease judgement of `leases` in the context that `lease_contexts`
derives from the whole cluster. Nothing here is granted: `gate` and `planning` decide that.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Final

from ceres_supervisor.decisions import backoff, leases
from ceres_supervisor.decisions.backoff import Policy
from ceres_supervisor.decisions.budget import Budget
from ceres_supervisor.decisions.plans import (
    STOPPING_KINDS,
    Action,
    Controls,
    ExitInfo,
    LeaseStatus,
    NodeRecord,
    NodeState,
    NodeView,
    Note,
    describe_exit,
    join,
)
from ceres_supervisor.desired.containers import DesiredCluster, DesiredNode
from ceres_supervisor.model import versions
from ceres_supervisor.model.observed import Observation, ObservedContainer

LEADER_FRESH_S: Final = 1.0
"""A CeresDB start needs a reading of meta's leader at most this old. The real server creates its
schema through the leader while it starts and exits 1 when that fails (docs/real-servers.md), so a
start is never decided on a reading from before the last election."""


def leader_freshness(observed: Observation, now: float) -> str | None:
    """Why the leader reading is too old to start CeresDB on, or None when it is fresh."""
    if observed.leader is None:
        return "waiting for a reading of meta's leader"
    age = now - observed.leader.at
    if age > LEADER_FRESH_S:
        return f"waiting for a fresh reading of meta's leader (the last is {age:.1f}s old)"
    return None


@dataclass(frozen=True)
class Want:
    """What an evaluated node asks for; granted (or held back) by the second step."""

    action: Action
    failure: str | None = None
    """The kind of failure counted when a stop by choice is granted (unhealthy, lease_lost...)."""
    state: NodeState = NodeState.STARTING
    rolling: bool = False
    """A recreate of a running container: one at a time, each after every other node is healthy."""
    asked: bool = False
    """A recreate the upgrade operation asked for: its order is the operation's (see `gate`)."""
    restart: bool = False
    """Granting it counts a restart (a start or create of a node that ran before): counted at the
    grant, so a start held back for a pass is counted once, when it goes."""


@dataclass
class Cycle:
    """Scratch state of one planning pass."""

    desired: DesiredCluster
    observed: Observation
    policy: Policy
    now: float
    jitter: Callable[[], float]
    meta_ready: bool
    meta_detail: str
    budget: Budget
    controls: Controls
    lease_context: dict[str, leases.Context] = field(default_factory=dict)
    notes: list[Note] = field(default_factory=list)
    wakes: list[float] = field(default_factory=list)
    awaiting_leader: bool = False
    """A CeresDB start waits for a fresh reading of meta's leader (the leader is read fast)."""

    def stale_leader(self, node: DesiredNode) -> str | None:
        """Why a start of `node` waits for a fresher leader reading; None for meta and when fresh."""
        if node.role != "ceresdb":
            return None
        why = leader_freshness(self.observed, self.now)
        self.awaiting_leader = self.awaiting_leader or why is not None
        return why

    def fail(self, node: str, rec: NodeRecord, reason: str, kind: str) -> NodeRecord:
        """Count a failure: backoff delay, crashloop flag, an event note."""
        count, delay, began = backoff.count(
            rec.count, rec.healthy_since, self.now, self.policy, self.jitter()
        )
        self.notes.append(Note(node, kind, reason, f"failure {count.failures}; restart in {delay:.1f}s"))
        if began:
            window = self.policy.crashloop_window_s
            self.notes.append(
                Note(node, "crashloop", reason, f"{len(count.failure_times)} failures within {window:g}s")
            )
        return replace(
            rec,
            count=count,
            reason=reason,
            next_restart_at=self.now + delay,
            healthy_since=None,
            lease=replace(rec.lease, reopen_since=None, lost_since=None),
        )


def evaluate(
    cycle: Cycle, node: DesiredNode, rec: NodeRecord | None
) -> tuple[NodeView, NodeRecord, Want | None]:
    if not node.is_local:
        return NodeView(NodeState.REMOTE, f"runs on {node.host}"), rec or NodeRecord(), None
    observed, now = cycle.observed, cycle.now
    first_sight = rec is None
    rec = rec or NodeRecord()
    busy = observed.busy.get(node.name)
    c = observed.containers.get(node.name)
    paused = cycle.controls.is_paused(node.name)
    blocked = node.role == "ceresdb" and not cycle.meta_ready

    # 1. An exit not yet handled: a failure, unless the supervisor (or the operator) caused it.
    if c is not None and c.state in ("exited", "dead") and c.exit_identity != rec.accounted_exit:
        exit_info = ExitInfo(c.exit_code, c.oom_killed, c.finished_at)
        rec = replace(rec, accounted_exit=c.exit_identity, last_exit=exit_info, stop_counted_for=None)
        if rec.expected_exit == c.id or busy in STOPPING_KINDS:
            rec = replace(rec, expected_exit=None, healthy_since=None)
        elif paused:
            rec = replace(rec, reason=f"stopped while paused ({describe_exit(c)})", next_restart_at=None)
        elif c.id in observed.engine_restart_exits:
            rec = replace(rec, reason="docker engine restarted", next_restart_at=None, healthy_since=None)
            cycle.notes.append(
                Note(node.name, "engine_restarted", describe_exit(c), "docker engine restarted")
            )
        elif first_sight:
            rec = replace(rec, reason=f"found stopped ({describe_exit(c)})")
        else:
            rec = cycle.fail(node.name, rec, describe_exit(c), "died")
    failed = observed.failed_actions.get(node.name)
    if failed is not None:
        step, error = failed
        if step == "stop":  # still running: nothing was counted twice, and its next crash counts
            rec = replace(rec, expected_exit=None, reason=f"stop failed: {error}")
        elif step == "slot":  # the store refused a disruption slot: it waits, nothing counted
            rec = replace(rec, expected_exit=None, reason=error)
        else:
            rec = cycle.fail(node.name, rec, error, "action_failed")
    # 2. Healthy long enough: the failure count starts over.
    rec = replace(rec, count=backoff.reset_if_due(rec.count, rec.healthy_since, now, cycle.policy))
    if rec.healthy_since is not None and rec.failures:
        cycle.wakes.append(rec.healthy_since + cycle.policy.backoff_reset_s)

    if busy is not None:
        state = NodeState.STOPPING if busy in ("stop", "remove", "restart") else NodeState.STARTING
        return NodeView(state, rec.reason), rec, None
    if paused:
        return NodeView(NodeState.PAUSED, _paused_reason(c, cycle.controls)), rec, None
    if (misplaced := observed.identity_problems.get(node.name)) is not None:
        return NodeView(NodeState.BLOCKED, misplaced), rec, None  # never started on another's data

    waiting = rec.next_restart_at is not None and now < rec.next_restart_at
    wait_state = NodeState.CRASHLOOP if rec.crashloop else NodeState.BACKOFF

    # 3. No container: create it (CeresDB only once meta is ready).
    if c is None:
        if blocked:
            return NodeView(NodeState.BLOCKED, cycle.meta_detail), rec, None
        if waiting:
            return NodeView(wait_state, rec.reason, rec.next_restart_at), rec, None
        if (stale := cycle.stale_leader(node)) is not None:
            return NodeView(NodeState.STARTING, stale), rec, None
        reason = "not created yet" if rec.run_key is None else "container missing"
        rec = replace(rec, next_restart_at=None)
        create = Want(Action("create", node.name, None, reason), restart=rec.run_key is not None)
        return NodeView(NodeState.STARTING, rec.reason), rec, create

    # 4. Spec changed: recreate (a stopped one at once; a running one rolling, one at a time). A
    # container of another release waits for the upgrade to ask for it, and runs on as it is.
    outdated = c.spec_hash != node.spec_hash
    upgrading = outdated and runs_other_release(c, cycle.desired)
    ask = cycle.controls.upgrades.get(node.name) if upgrading else None
    if outdated and (not upgrading or ask is not None):
        reason = f"spec changed ({c.spec_hash or 'unlabelled'} -> {node.spec_hash})"
        if ask is not None:
            reason = f"{ask.reason}: {c.release} -> {cycle.desired.spec.release.label()}"
        flush = node.role == "ceresdb" and c.is_running
        if not c.is_running or (ask is not None and ask.together):
            if blocked and ask is None:
                return NodeView(NodeState.BLOCKED, cycle.meta_detail), rec, None
            if not c.is_running and (stale := cycle.stale_leader(node)) is not None:
                return NodeView(NodeState.STARTING, join(reason, stale)), rec, None
            recreate = Action("recreate", node.name, c.id, reason, flush=flush)
            state = NodeState.STOPPING if c.is_running else NodeState.STARTING
            return NodeView(state, reason), rec, Want(recreate, None, state)
        view, rec, _want = _watch_running(cycle, node, rec, c, blocked)
        want = Want(
            Action("recreate", node.name, c.id, reason, by_choice=True, flush=flush),
            None,
            NodeState.STOPPING,
            True,
            ask is not None,
        )
        return replace(view, reason=join(reason, view.reason)), rec, want
    waits = f"runs {c.release}; {cycle.controls.upgrade_note or 'the upgrade waits'}" if upgrading else None

    # 5. Running (or paused by Docker): watch it; a planned restart asked for is a stop by choice.
    if c.is_running:
        view, rec, watching = _watch_running(cycle, node, rec, c, blocked)
        view = replace(view, reason=join(view.reason, waits))
        planned = cycle.controls.restarts.get(node.name)
        if planned is None or watching is not None:
            return view, rec, watching
        restart = Action(
            "restart", node.name, c.id, planned, by_choice=True, as_is=upgrading, flush=node.role == "ceresdb"
        )
        return view, rec, Want(restart, None, NodeState.STOPPING)

    # 6. Stopped with the right spec (or an older release's, as it is): start it again, after the
    # backoff delay.
    if blocked:
        return NodeView(NodeState.BLOCKED, join(cycle.meta_detail, rec.reason or "stopped")), rec, None
    if waiting:
        return NodeView(wait_state, join(rec.reason, waits), rec.next_restart_at), rec, None
    if (stale := cycle.stale_leader(node)) is not None:
        return NodeView(NodeState.STARTING, join(rec.reason or "stopped", stale)), rec, None
    rec = replace(rec, next_restart_at=None)
    start = Action("start", node.name, c.id, rec.reason or "stopped", as_is=upgrading)
    again = not first_sight or rec.failures > 0
    return NodeView(NodeState.STARTING, join(rec.reason, waits)), rec, Want(start, restart=again)


def runs_other_release(c: ObservedContainer, desired: DesiredCluster) -> bool:
    """The container runs another release's servers than the file's (an upgrade, or the way back);
    a container whose release cannot be told is not one (it is recreated as any other change)."""
    running = versions.parse_release(c.release)
    return running is not None and not running.same_servers(desired.spec.release)


def _paused_reason(c: ObservedContainer | None, controls: Controls) -> str:
    who = "the whole cluster is paused" if controls.all_paused else "paused by the operator"
    if c is None:
        return f"{who}; no container"
    if c.is_running:
        return f"{who}; container {c.state}"
    return f"{who}; container stopped ({describe_exit(c)})"


def _watch_running(
    cycle: Cycle, node: DesiredNode, rec: NodeRecord, c: ObservedContainer, blocked: bool
) -> tuple[NodeView, NodeRecord, Want | None]:
    now, policy = cycle.now, cycle.policy
    if rec.run_key != c.run_key:  # a new run: forget the previous run's probes and clocks
        age = (cycle.observed.wall - c.started_at).total_seconds() if c.started_at else 0.0
        rec = replace(
            rec,
            run_key=c.run_key,
            run_seen_at=now - max(0.0, age),
            healthy_since=None,
            probe_failures=0,
            last_probe_at=0.0,
            next_restart_at=None,
            stop_counted_for=None,
            lease=replace(rec.lease, reopen_since=None, lost_since=None, progress=0),
        )
    probe = cycle.observed.probes.get(node.name)
    fresh = probe if probe is not None and probe.run_id == c.run_key else None
    if fresh is not None and fresh.at > rec.last_probe_at:
        rec = replace(rec, last_probe_at=fresh.at, probe_failures=0 if fresh.ok else rec.probe_failures + 1)
        if fresh.ok and rec.healthy_since is None:
            rec = replace(rec, healthy_since=now, reason=None)

    def stop(reason: str, state: NodeState, kind: str) -> Want:
        return Want(Action("stop", node.name, c.id, reason, by_choice=True), kind, state)

    if rec.healthy_since is None:  # still starting
        deadline = rec.run_seen_at + policy.start_timeout_s
        if blocked:
            return NodeView(NodeState.BLOCKED, cycle.meta_detail), rec, None
        # Past start_timeout it is judged like any running node: failure_threshold failed probes
        # in a row (a node started here has failed every probe since; one found running has not).
        if now >= deadline and rec.probe_failures >= policy.failure_threshold:
            answer = fresh.detail if fresh else "no probe answer"
            reason = f"not healthy within {policy.start_timeout_s:g}s: {answer}"
            return (
                NodeView(NodeState.UNHEALTHY, reason),
                rec,
                stop(reason, NodeState.UNHEALTHY, "start_timeout"),
            )
        if deadline > now:
            cycle.wakes.append(deadline)
        return NodeView(NodeState.STARTING, fresh.detail if fresh and not fresh.ok else None), rec, None

    judgement: leases.Judgement | None = None
    status: LeaseStatus | None = None
    if node.role == "ceresdb" and not blocked:
        judgement = leases.judge(
            cycle.observed.leases,
            node.endpoint,
            c.started_at,
            rec.run_seen_at,
            rec.lease,
            cycle.lease_context[node.name],
            fresh.shards if fresh is not None else None,
        )
        rec = replace(rec, lease=judgement.memory)
        held = {"held": True, "unassigned": None, "unknown": None}.get(judgement.state, False)
        status = LeaseStatus(held, judgement.shards, judgement.detail)
    keeps = judgement is not None and judgement.state in ("held", "unassigned")

    if rec.probe_failures >= policy.failure_threshold:
        detail = f"{rec.probe_failures} failed probes: {fresh.detail if fresh else '?'}"
        if blocked:
            return NodeView(NodeState.BLOCKED, join(cycle.meta_detail, detail)), rec, None
        reason = f"unhealthy: {detail}"
        view = NodeView(NodeState.UNHEALTHY, reason, lease=status)
        return view, rec, stop(reason, NodeState.UNHEALTHY, "unhealthy")
    probe_note = fresh.detail if fresh is not None and not fresh.ok else None

    if node.role == "meta":
        member = cycle.observed.meta.get(node.name)
        etcd_ok = member is not None and member.etcd_ok
        note = join(probe_note, None if etcd_ok else "etcd not healthy")
        return NodeView(NodeState.HEALTHY, note, available=etcd_ok), rec, None
    if judgement is None:  # blocked: meta is not ready, nothing is judged
        rec = replace(rec, lease=replace(rec.lease, reopen_since=None, lost_since=None))
        return NodeView(NodeState.BLOCKED, cycle.meta_detail), rec, None
    if keeps:
        return (
            NodeView(NodeState.HEALTHY, probe_note, available=True, lease=status),
            rec,
            None,
        )
    if judgement.state == "unknown":
        note = join(probe_note, f"lease unknown: {judgement.detail}")
        return NodeView(NodeState.HEALTHY, note, lease=status), rec, None
    if judgement.state == "reopening":
        return NodeView(NodeState.REOPENING, judgement.detail, lease=status), rec, None
    if judgement.restart:
        reason = f"lease lost for {judgement.lost_for_s:.0f}s: {judgement.detail}"
        view = NodeView(NodeState.LEASE_LOST, reason, lease=status)
        return view, rec, stop(reason, NodeState.LEASE_LOST, "lease_lost")
    grace = f"restart after lease_grace ({policy.lease_grace_s:g}s)"
    return NodeView(NodeState.LEASE_LOST, join(judgement.detail, grace), lease=status), rec, None


# --- what the rest of the cluster says about a node's shards ---------------------------------


def lease_contexts(cycle: Cycle, records: dict[str, NodeRecord]) -> dict[str, leases.Context]:
    """For each local CeresDB node: what the rest of the cluster says about its shards' wait."""
    view = cycle.observed.leases
    pace = versions.Pace.of(cycle.desired.spec.release.version, cycle.desired.spec.ceresdb.lease)
    if view is None or view.error is not None:
        empty = leases.Context(pace, (), 0, (), cycle.policy.lease_grace_s)
        return {n.name: empty for n in cycle.desired.ceresdb}
    by_endpoint = {n.endpoint: n for n in cycle.desired.ceresdb}
    old: set[int] = set()
    for node in cycle.desired.ceresdb:
        c = cycle.observed.containers.get(node.name)
        rec = records.get(node.name)
        if node.is_local and c is not None and rec is not None:
            _current, earlier, _memory = leases.classify(view, node.endpoint, c.started_at, rec.lease)
            old |= set(earlier)
    pending = sum(
        1
        for endpoint, shards in view.assigned.items()
        for s in shards
        if s in old or s not in view.locks or view.locks[s].holder != endpoint
    )
    offline = {endpoint for endpoint in view.assigned if not _online(cycle, by_endpoint.get(endpoint))}
    contexts = {}
    for node in cycle.desired.ceresdb:
        others = tuple(
            sorted(by_endpoint[e].name if e in by_endpoint else e for e in offline - {node.endpoint})
        )
        contexts[node.name] = leases.Context(
            pace, others, pending, tuple(sorted(old)), cycle.policy.lease_grace_s
        )
    return contexts


def _online(cycle: Cycle, node: DesiredNode | None) -> bool:
    """Whether CeresMeta would count the node as online (it heartbeats only while it runs)."""
    if node is None:
        return False  # an endpoint that is not in the file never comes back
    if not node.is_local:
        peer = cycle.budget.peers.get(node.name)
        return peer is None or peer[1] != "not running"  # an unpublished node may well be online
    c = cycle.observed.containers.get(node.name)
    return c is not None and c.state == "running"
