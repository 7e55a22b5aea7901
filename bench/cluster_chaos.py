"""Several machines under chaos: zero stops by choice beyond the budget.

    .venv/bin/python bench/cluster_chaos.py [SECONDS] [SEED]        (default 600 s, seed from the clock)

The layout of bench/cluster.py: three supervisors with `--host 127.0.0.1/2/3` on one file, three
meta members and six CeresDB nodes, `max_unavailable = 1`. For SECONDS, every 3-8 s, one fault
among those possible at that moment:

- kill: SIGKILL of a container's main process (a crash);
- pause: `docker pause` (the node stops answering; only a stop by choice ends it);
- freeze: the stand-in's fault hook, a CeresDB node's etcd keep-alives (its shard locks lapse)
  or a meta member's HTTP;
- agent: SIGKILL of one supervisor; started again 2-10 s later (it adopts its containers);
- docker: one machine's Docker Engine frozen (SIGSTOP of its dockerd, its containers running) for
  30 s (each agent has a Docker Engine of its own: testkit/machines.py);
- partition: one agent cut from the etcd member its watch follows (its proxy frozen) for 30 s;
- meta500: every meta member answers `getNodeShards` with HTTP 500 for 10 s (the stand-in's hook);
- operator: a CeresDB node paused through one agent's API, resumed through another's 15-25 s later.

At most one meta member is harmed at a time (a fault goes to meta only while all three run and
none is paused or frozen) and at most one machine is impaired at a time (an agent down, its Docker
frozen or it partitioned): three members tolerate one failure, and with two gone no design can
restart them safely. CeresDB nodes get no such care.

Judged from the three Docker Engines' own events, never from the supervisors' logs
(testkit/dockerevents.py): a stop by choice is any `kill` the supervisor causes (SIGTERM, the
SIGKILL of a timed-out stop, a forced remove); a node is down by choice from it to its next `start`.
- pauses lost: a node paused by the operator that a supervisor stopped or started while paused
  (more than 2 s after the pause was asked, the time for it to reach every agent; until the resume);
- overlapping: the most nodes of a role down by choice at one moment (budget: 1 each);
- stopped beside a crash: stops by choice of a node while another node of its role had been not
  running (a `die`, no `start` yet) for more than 1 s, the time a decision takes to reach another
  agent (budget: none; a CeresDB node may be stopped beside nodes that are merely unhealthy, see
  README's disruption budget, and that is not visible in Docker's events).
Then every agent runs again, and the time is measured until every pause and freeze has been ended
and all three agents see the whole cluster healthy. A CeresDB node whose keep-alives were frozen
while it held no shard lock, and that holds none at the end, needs no ending: it has nothing to
lose and serves as before (a run once waited 600 s for such a node to be stopped).
"""

from __future__ import annotations

import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import Any

import cluster
import common
import docker
import docker.errors
from stats import summary

from testkit.dockerevents import DockerEvent, DockerEvents
from testkit.standins import kill_main_process

MAX_UNAVAILABLE = 1
DECISION_S = 1.0
RECOVERY_S = 600.0


def crashed_since(events: list[DockerEvent], node: str, at: float) -> float | None:
    """When `node`, not running at `at`, died by itself (its last `die` with no `start` after it, and
    no stop by choice since its last start); None when it was running or stopped by choice."""
    since_start = [e for e in events if e.node == node and e.at < at]
    starts = [i for i, e in enumerate(since_start) if e.action == "start"]
    tail = since_start[starts[-1] + 1 :] if starts else since_start
    dies = [e for e in tail if e.action == "die"]
    chosen = [e for e in tail if e.action == "kill"]
    return dies[-1].at if dies and not chosen else None


def beside_crashes(recorded: DockerEvents) -> list[tuple[str, str]]:
    """(role, what) of each stop by choice made while another node of its role had been down by
    itself (crashed, not restarted yet) for more than DECISION_S."""
    found = []
    events = sorted(recorded.of(), key=lambda e: e.at)
    nodes = {(e.node, e.role) for e in events}
    for stop in recorded.chosen_stops():
        for other, role in sorted(nodes):
            if other == stop.node or role != stop.role:
                continue
            since = crashed_since(events, other, stop.at)
            if since is not None and stop.at - since > DECISION_S:
                found.append(
                    (
                        role,
                        f"{stop.node} stopped at {stop.at:.2f} while {other} had been down "
                        f"{stop.at - since:.1f} s",
                    )
                )
    return found


Harm = tuple[float, str, str, str]
"""(time.time(), container id, kind: pause / freeze-lease / freeze-http, node) of a pause or freeze."""


NOT_ENDED = "nothing"


def ended_by(recorded: DockerEvents, harm: Harm, lockless: Callable[[str], bool]) -> tuple[str, float | None]:
    """What ended one pause or freeze, and after how long for a stop by choice: a stop by choice, a
    crash injected later, nothing needed (a CeresDB node whose lease keep-alives were frozen while
    it held no shard lock, and holds none now: there is nothing to lose, and it serves as before:
    `lockless`), or NOT_ENDED (yet)."""
    at, container, kind, node = harm
    after = [e for e in recorded.of(actions=("kill", "die")) if e.container == container and e.at > at]
    if not after:
        harmless = kind == "freeze-lease" and lockless(node)
        return ("nothing needed (no shard lock to lose)" if harmless else NOT_ENDED), None
    if after[0].action == "kill":
        return "a stop by choice", after[0].at - at
    return "a crash injected later", None


def outcomes(
    recorded: DockerEvents, harms: list[Harm], lockless: Callable[[str], bool] = lambda _node: False
) -> tuple[Counter[str], list[float]]:
    """What ended each pause or freeze (`ended_by`), counted, and the delays of the stops."""
    ended: Counter[str] = Counter()
    delays = []
    for harm in harms:
        how, delay = ended_by(recorded, harm, lockless)
        ended[how] += 1
        if delay is not None:
            delays.append(delay)
    return ended, delays


EXPLAIN_BEFORE_S = 20.0
EXPLAIN_AFTER_S = 5.0
EXPLAINED = ("action_started", "action_done", "action_failed", "disruption_slot", "coordination", "renew")


def explain(
    at: float,
    role: str,
    recorded: DockerEvents,
    logs: dict[str, list[dict[str, Any]]],
    say: Callable[[str], None],
) -> None:
    """What Docker and each agent said around `at` (a stop that broke a rule): the role's events and
    every agent's actions, slots and coordination lines from EXPLAIN_BEFORE_S before to
    EXPLAIN_AFTER_S after. Printed, for the one who reads the run; never judged."""
    low, high = at - EXPLAIN_BEFORE_S, at + EXPLAIN_AFTER_S
    for e in recorded.of():
        if e.role == role and low <= e.at <= high:
            say(f"    docker {e.host} {e.at:.2f} {e.action} {e.node} signal={e.signal} exit={e.exit_code}")
    for host, lines in logs.items():
        for line in lines:
            try:
                when = datetime.fromisoformat(str(line.get("timestamp"))).timestamp()
            except ValueError:
                continue
            event = str(line.get("event"))
            if low <= when <= high and any(event.startswith(k) for k in EXPLAINED):
                rest = {k: v for k, v in line.items() if k not in ("timestamp", "event", "level")}
                say(f"    agent {host} {when:.2f} {event} {rest}")


IMPAIR_S = 30.0
"""How long a machine stays impaired (Docker frozen, an agent partitioned)."""
META500_S = 10
PAUSE_SETTLE_S = 2.0
"""How long a pause may take to reach every agent (a decision already in flight)."""


def pauses_lost(recorded: DockerEvents, windows: list[tuple[str, float, float]]) -> list[str]:
    """Operator pauses a supervisor did not keep: a `kill` or `start` of the node while paused."""
    lost = []
    for node, paused, resumed in windows:
        touched = [
            e for e in recorded.of(node, ("kill", "start")) if paused + PAUSE_SETTLE_S < e.at < resumed
        ]
        lost += [
            f"{node}: {e.action} at {e.at:.2f} while paused ({paused:.2f}-{resumed:.2f})" for e in touched
        ]
    return lost


class Chaos:
    def __init__(self, m: cluster.Machines, rng: random.Random) -> None:
        self.m = m
        self.rng = rng
        self.faults: Counter[str] = Counter()
        self.missed: Counter[str] = Counter()
        self.idle = 0
        """Steps with nothing the rules allow to harm."""
        self.frozen_meta: set[str] = set()
        self.agent_down: tuple[str, float] | None = None
        """(host, when to start it again)."""
        self.harms: list[Harm] = []
        """Each pause and freeze: what ended it is judged afterwards."""
        self.impaired: tuple[str, str, float] | None = None
        """(kind, host, when it ends) of the machine impaired now (Docker frozen, partitioned)."""
        self.partitioned: object = None
        self.operator: tuple[str, float, float] | None = None
        """(node, paused at, resume at) of the operator's pause in force."""
        self.pauses: list[tuple[str, float, float]] = []
        """(node, paused at, resumed at): the operator's pauses, judged afterwards."""

    def containers(self) -> list[docker.models.containers.Container]:
        found = []
        for client in self.m.clients():
            try:
                found += client.containers.list(
                    all=True, filters={"label": f"io.ceres-supervisor.cluster={self.m.name}"}
                )
            except (docker.errors.DockerException, OSError):
                continue  # a frozen engine: its containers are left alone this step
        return found

    def _end_due(self, now: float) -> None:
        if self.agent_down is not None and now >= self.agent_down[1]:
            self.m.start_agent(self.agent_down[0])
            self.say(f"agent {self.agent_down[0]} started again")
            self.agent_down = None
        if self.impaired is not None and now >= self.impaired[2]:
            kind, host, _ = self.impaired
            if kind == "docker":
                self.m.engines[host].thaw()
            elif self.partitioned is not None:
                self.partitioned.thaw()  # type: ignore[attr-defined]
                self.partitioned = None
            self.say(f"{kind} of {host} ended")
            self.impaired = None
        if self.operator is not None and now >= self.operator[2]:
            node, paused, _ = self.operator
            other = self.rng.choice([h for h in cluster.HOSTS if h != self.m.hosts[node]])
            code, body = common.http_post(
                f"{self.m.agents[other].url}/v1/nodes/{node}/resume", {"who": "cli"}
            )
            if code != 200:  # as an operator would: again at the next step, maybe through another agent
                self.missed["resume"] += 1
                self.say(f"operator could not resume {node} through {other}: HTTP {code} {body[:120]!r}")
                return
            self.pauses.append((node, paused, time.time()))
            self.say(f"operator resumed {node} through {other}")
            self.operator = None

    def _machine_fault(self, kind: str) -> None:
        host = self.rng.choice(cluster.HOSTS)
        if kind == "docker":
            self.m.engines[host].freeze()
        else:
            proxy = self.m.watched(host)
            if proxy is None:
                self.missed[kind] += 1
                self.say(f"missed partition of {host}: its watch member not known now")
                return
            proxy.freeze()
            self.partitioned = proxy
        self.impaired = (kind, host, time.monotonic() + IMPAIR_S)
        self.faults[kind] += 1
        self.say(f"{kind} of {host} for {IMPAIR_S:g} s")

    def _meta500(self) -> None:
        for c in self.containers():
            if c.labels.get("io.ceres-supervisor.role") == "meta" and c.status == "running":
                c.exec_run(["ceres-emulator-fault", "http500", "getNodeShards", str(META500_S)])
        self.faults["meta500"] += 1
        self.say(f"meta answers getNodeShards 500 for {META500_S} s")

    def _operator_pause(self) -> None:
        node = self.rng.choice([n for n in self.m.hosts if n.startswith("db")])
        host = self.rng.choice(cluster.HOSTS)
        if self.m.agents[host].process.poll() is not None:
            self.missed["operator"] += 1
            return
        code, _body = common.http_post(f"{self.m.agents[host].url}/v1/nodes/{node}/pause", {"who": "cli"})
        if code != 200:
            self.missed["operator"] += 1
            self.say(f"missed operator pause of {node} through {host}: HTTP {code}")
            return
        now = time.time()
        self.operator = (node, now, time.monotonic() + self.rng.uniform(15, 25))
        self.faults["operator"] += 1
        self.say(f"operator paused {node} through {host}")

    def step(self) -> None:
        self._end_due(time.monotonic())
        machine_free = self.agent_down is None and self.impaired is None
        extra = ["docker", "partition"] * machine_free + ["meta500"] + ["operator"] * (self.operator is None)
        if self.rng.random() < 0.3:
            kind = self.rng.choice(extra)
            if kind in ("docker", "partition"):
                self._machine_fault(kind)
            elif kind == "meta500":
                self._meta500()
            else:
                self._operator_pause()
            return
        everything = self.containers()
        running = [c for c in everything if c.status == "running"]
        meta = [c for c in everything if c.labels.get("io.ceres-supervisor.role") == "meta"]
        self.frozen_meta &= {c.id for c in meta if c.status == "running"}  # a new start clears the hook
        meta_whole = len(meta) == 3 and all(c.status == "running" for c in meta) and not self.frozen_meta
        targets = [c for c in running if c.labels.get("io.ceres-supervisor.role") == "ceresdb" or meta_whole]
        kinds = ["kill", "pause", "freeze"] * bool(targets) + ["agent"] * machine_free
        if not kinds:  # nothing to harm that the rules allow: an agent is down, nothing else runs
            self.idle += 1
            self.say("idle: nothing to harm")
            return
        kind = self.rng.choices(
            kinds, weights=[{"kill": 4, "pause": 2, "freeze": 2, "agent": 1}[k] for k in kinds]
        )[0]
        if kind == "agent":
            host = self.rng.choice(cluster.HOSTS)
            agent = self.m.agents[host]
            agent.process.kill()
            agent.process.wait(10)
            self.agent_down = (host, time.monotonic() + self.rng.uniform(2, 10))
            self.faults["agent"] += 1
            self.say(f"agent {host} killed")
            return
        target = self.rng.choice(targets)
        role = target.labels.get("io.ceres-supervisor.role")
        try:
            if kind == "kill":
                kill_main_process(target)
            elif kind == "pause":
                target.pause()
            else:
                hook = "freeze-lease" if role == "ceresdb" else "freeze-http"
                result = target.exec_run(["ceres-emulator-fault", hook])
                if result.exit_code != 0:
                    raise docker.errors.APIError(f"the fault hook failed: {result.output!r}")
        except (docker.errors.APIError, ProcessLookupError) as err:
            self.missed[kind] += 1  # it died or changed under us
            self.say(f"missed {kind} of {target.name}: {err}")
            return
        if kind != "kill":
            hook = "pause" if kind == "pause" else "freeze-lease" if role == "ceresdb" else "freeze-http"
            self.harms.append(
                (time.time(), target.id[:12], hook, target.labels.get("io.ceres-supervisor.node", ""))
            )
            if role == "meta":
                self.frozen_meta.add(target.id)  # paused or frozen until its agent stops it
        self.faults[f"{kind} {role}"] += 1
        self.say(f"{kind} {target.name}")

    def say(self, what: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {what}", flush=True)

    def run(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.step()
            time.sleep(self.rng.uniform(3, 8))
        self.end_all()

    def end_all(self) -> None:
        """Every fault ended: the agent back, Docker thawed, the pause resumed (a resume that is not
        answered is asked again, as an operator would, for up to a minute)."""
        for _ in range(20):
            self._end_due(float("inf"))
            if self.operator is None:
                return
            time.sleep(3)


def main(seconds: int, seed: int) -> None:
    run = common.Run("cluster_chaos", [str(seconds), str(seed)])
    settings = common.changed_settings(cluster.SETTINGS)
    print(f"chaos seed {seed} (replay: bench/cluster_chaos.py {seconds} {seed})", flush=True)
    m = cluster.Machines(log_level="info")
    recovered_s: float | None = None
    stuck = ""
    try:
        m.start()
        m.wait_healthy()
        clients = m.clients()
        with DockerEvents(clients[0], m.name, tuple(clients[1:])) as recorded:
            chaos = Chaos(m, random.Random(seed))
            try:
                chaos.run(seconds)
            finally:
                chaos.end_all()
            ended = time.monotonic()
            try:
                # Healthy as the agents see it is not enough: a pause made just before the end is
                # not noticed yet. Every pause and freeze must have been ended (by a stop) first.
                common.wait_for(
                    lambda: (
                        not outcomes(recorded, chaos.harms, m.lockless)[0][NOT_ENDED]
                        and m.healthy_everywhere()
                    ),
                    RECOVERY_S,
                    "every pause and freeze ended, every agent seeing the cluster healthy",
                    0.25,
                )
                recovered_s = time.monotonic() - ended
            except TimeoutError as err:
                left = outcomes(recorded, chaos.harms, m.lockless)[0][NOT_ENDED]
                stuck = (
                    f"{err}; pauses and freezes not ended: {left}; states and reasons as each agent "
                    f"sees them: {[cluster.View(d.url).reasons() for d in m.agents.values()]}; the "
                    f"agents' logs are kept in {m.keep_logs()}"
                )
            recorded.check()
            overlap = {role: recorded.most_down_at_once(role)[0] for role in ("meta", "ceresdb")}
            stops = Counter(e.role for e in recorded.chosen_stops())
            crashes = Counter(e.role for e in recorded.of(actions=("die",)))
            beside = beside_crashes(recorded)
            ended, delays = outcomes(recorded, chaos.harms, m.lockless)
            lost = pauses_lost(recorded, chaos.pauses)
            logs = m.logs()
            for role in ("meta", "ceresdb"):
                most, intervals = recorded.most_down_at_once(role)
                if most <= MAX_UNAVAILABLE:
                    continue
                for node, start, _end in intervals:
                    others = [n for n, a, b in intervals if n != node and a < start < b]
                    if others:
                        chaos.say(
                            f"explain: {node} stopped at {start:.2f} while {others} were down by choice"
                        )
                        explain(start, role, recorded, logs, chaos.say)
            for stop in recorded.chosen_stops():
                if any(stop.node in what and f"{stop.at:.2f}" in what for _r, what in beside):
                    chaos.say(f"explain: {stop.node} stopped at {stop.at:.2f} beside a crash")
                    explain(stop.at, stop.role, recorded, logs, chaos.say)
            for harm in chaos.harms:
                at, container, _kind, _node = harm
                if ended_by(recorded, harm, m.lockless)[0] == NOT_ENDED:
                    chaos.say(f"explain: harm of {container} at {at:.2f} never ended in Docker's events")
                    role = next((e.role for e in recorded.of() if e.container == container), "")
                    explain(at + EXPLAIN_BEFORE_S, role, recorded, logs, chaos.say)
    finally:
        m.close()

    faults = ", ".join(f"{k} {v}" for k, v in sorted(chaos.faults.items()))
    missed = ", ".join(f"{k} {v}" for k, v in sorted(chaos.missed.items())) or "none"
    run.table(
        f"Several machines: {seconds} s of chaos, stops by choice against the budget (max_unavailable = 1)",
        ["role", "stops by choice", "containers died", "most down by choice at once", "stops beside a crash"],
        [
            [role, stops[role], crashes[role], overlap[role], sum(1 for r, _ in beside if r == role)]
            for role in ("meta", "ceresdb")
        ],
        settings,
        f"Seed {seed}. Faults injected: {faults}; missed (the target died or changed under the step): {missed}; "
        f"idle steps (an agent down and nothing else allowed to harm): {chaos.idle}. "
        "Judged from Docker's events: a stop by choice is a `kill` with SIGTERM, down from it to the node's next "
        f"`start`; 'beside a crash': another node of the role not running for more than {DECISION_S:g} s at the "
        "stop (a death younger than that may not have reached the deciding agent). Pauses and freezes ended by: "
        + (", ".join(f"{k} {v}" for k, v in sorted(ended.items())) or "none injected")
        + (
            f" (the stop came {summary(delays)['median']:.1f} s after the fault, median; {max(delays):.1f} s at most)"
            if delays
            else ""
        )
        + ". Recovery after the chaos: "
        + (
            f"every pause and freeze was ended and every agent saw the whole cluster healthy {recovered_s:.1f} s "
            "after the last fault."
            if recovered_s is not None
            else f"NOT within {RECOVERY_S:g} s: {stuck}"
        )
        + ("" if not beside else " Stops beside a crash: " + "; ".join(what for _, what in beside))
        + f" Operator pauses: {len(chaos.pauses)}, lost: {len(lost)}"
        + (": " + "; ".join(lost) if lost else "."),
    )
    met = (
        all(v <= MAX_UNAVAILABLE for v in overlap.values())
        and not beside
        and not lost
        and recovered_s is not None
    )
    run.target(
        "cluster-chaos",
        f"{sum(stops.values())} stops by choice in {seconds} s ({sum(chaos.faults.values())} faults): "
        f"at most {max(overlap.values())} node(s) of a role down by choice at once, {len(beside)} beside "
        f"a crash, {len(lost)} of {len(chaos.pauses)} operator pauses lost; "
        + (f"healthy {recovered_s:.0f} s after" if recovered_s is not None else "not recovered"),
        met,
        settings,
    )
    run.save()


if __name__ == "__main__":
    main(
        int(sys.argv[1]) if len(sys.argv) > 1 else 600,
        int(sys.argv[2]) if len(sys.argv) > 2 else int(time.time()),
    )
