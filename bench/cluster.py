"""Several machines, on one: three supervisors with `--host 127.0.0.1/2/3`, one file.

    .venv/bin/python bench/cluster.py [CHANGES] [AGENT_KILLS] [IDLE_SECONDS]     (default 20 5 60)

Three meta members (one per host) and six CeresDB nodes (two per host), every port distinct; each
agent is its own `ceres-supervisor run --host 127.0.0.x --listen 127.0.0.x:PORT` process, with a
Docker Engine of its own (testkit/machines.py: one dockerd per simulated machine) and the etcd
members reached through proxies of its own (testkit/proxy.py), so that one machine's Docker can
be frozen and one agent cut from a member. Measured, in this order, on one cluster:

- idle: CPU (utime + stime from /proc) and the largest RSS of each agent over IDLE_SECONDS;
- `GET /v1/cluster` latency: 1000 sequential requests on one keep-alive connection, per agent;
- a state change on host 1 seen on host 3: a host-1 CeresDB node (db0 and db1 in turn), `healthy`
  in both views for 2 s, is SIGKILLed (its main process); from the kill to the first `/v1/cluster`
  answer of host 3 (and, for comparison, of host 1 itself) that shows it not `healthy`, each
  polled every 5 ms (a kill is discarded when a view had it leave `healthy` before the kill);
- an agent SIGKILLed (hosts 2, 3, 1 in turn): from the kill to the first answer of each other
  agent showing all its nodes `unknown`, polled every 20 ms; then it is started again (it adopts
  its containers) and the cluster is healthy everywhere before the next sample;
- a machine's Docker Engine frozen (hosts 2, 3, 1 in turn; its containers keep running): from the
  freeze to the first answer of each other agent showing all that machine's nodes `unknown`.

Times are those of the answer's arrival (an upper bound: the state changed up to one poll before).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import common
import docker
from stats import summary

from testkit.machines import Engine, Engines
from testkit.proxy import Proxy
from testkit.standins import IMAGE_PREFIX, FastTicks

HOSTS = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
VERSION = "1.2.7"
SETTINGS = {"agent_ttl": "5s", "backoff_reset": "1s"}
"""agent_ttl as the target asks; backoff_reset so that the n-th kill of a node restarts it at once, as
the first did (the backoff is not what is measured here)."""
AGENT_TTL_S = 5


def cluster_file(name: str, state: Path, ports: list[int]) -> str:
    free = iter(ports)
    lines = [
        "[cluster]",
        f'name = "{name}"',
        f'state_dir = "{state}"',
        f'version = "{VERSION}"',
        "",
        common.supervisor_table({**SETTINGS, "listen": "127.0.0.1:1"}),  # each agent has --listen
        "[meta]",
        f'image = "{IMAGE_PREFIX}/ceresmeta-server:{VERSION}"',
        "",
        "[ceresdb]",
        f'image = "{IMAGE_PREFIX}/ceresdb-server:{VERSION}"',
        "shard_lock_ttl = 15",
        "",
    ]
    for i, host in enumerate(HOSTS):
        lines += [
            "[[meta.nodes]]",
            f'name = "meta{i}"',
            f'host = "{host}"',
            f"client_port = {next(free)}",
            f"peer_port = {next(free)}",
            f"http_port = {next(free)}",
            "",
        ]
    for i in range(6):
        lines += [
            "[[ceresdb.nodes]]",
            f'name = "db{i}"',
            f'host = "{HOSTS[i // 2]}"',
            f"grpc_port = {next(free)}",
            f"http_port = {next(free)}",
            f"mysql_port = {next(free)}",
            f"postgresql_port = {next(free)}",
            "",
        ]
    return "\n".join(lines)


class View:
    """One agent's `GET /v1/cluster`, on a keep-alive connection (reopened after an error)."""

    def __init__(self, url: str) -> None:
        self.host, port = url.removeprefix("http://").split(":")
        self.port = int(port)
        self.conn: http.client.HTTPConnection | None = None

    def get(self) -> dict[str, Any] | None:
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=2)
            self.conn.request("GET", "/v1/cluster")
            response = self.conn.getresponse()
            body = response.read()
            return json.loads(body) if response.status == 200 else None
        except (OSError, http.client.HTTPException, ValueError):
            self.close()
            return None

    def states(self) -> dict[str, str]:
        doc = self.get()
        return {n["name"]: n["state"] for n in doc["nodes"]} if doc else {}

    def reasons(self) -> dict[str, str]:
        """node -> "state: reason" of every node not healthy."""
        doc = self.get()
        nodes = doc["nodes"] if doc else []
        return {n["name"]: f"{n['state']}: {n.get('reason')}" for n in nodes if n["state"] != "healthy"}

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def first_time(
    view: View, holds: Callable[[dict[str, str]], bool], timeout_s: float, interval_s: float
) -> float:
    """time.time() of the first answer whose node states satisfy `holds`; a fresh View per watcher."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        states = view.states()
        if states and holds(states):
            return time.time()
        time.sleep(interval_s)
    raise TimeoutError(f"no answer of {view.host} showed the change within {timeout_s}s")


class Machines:
    """The three agents on one file, each with its Docker Engine and its proxies to the etcd
    members, and the cluster's containers; `close` removes everything."""

    def __init__(self, log_level: str = "warning") -> None:
        common.build.main([VERSION])
        self.log_level = log_level
        """The agents' (bench/cluster_chaos.py reads their actions back from the logs: info)."""
        self.name = f"b{uuid.uuid4().hex[:8]}"
        self.state = common.STATE_ROOT / self.name
        self.state.mkdir(parents=True, exist_ok=True)
        self.config = self.state / "cluster.toml"
        ports = common.free_ports(3 * 3 + 6 * 4)
        self.config.write_text(cluster_file(self.name, self.state / "data", ports))
        spec = common.loading.load(self.config).spec
        self.client_ports = [m.client_port for m in spec.meta.nodes]
        self.hosts = {n.name: n.host for n in [*spec.meta.nodes, *spec.ceresdb.nodes]}
        self.listen = {host: f"{host}:{port}" for host, port in zip(HOSTS, common.free_ports(3), strict=True)}
        self.agents: dict[str, common.Daemon] = {}
        self.ticks: list[FastTicks] = []
        self.pool: Engines | None = None
        self.engines: dict[str, Engine] = {}
        self.proxies: dict[str, list[Proxy]] = {}
        """Each agent's own way to each etcd member (a partition freezes one)."""

    def start(self) -> None:
        self.pool = Engines(docker.from_env(), versions=[VERSION])
        self.engines = dict(zip(HOSTS, self.pool.start(3), strict=True))
        self.proxies = {
            host: [Proxy(HOSTS[i], self.client_ports[i], host=host).__enter__() for i in range(3)]
            for host in HOSTS
        }
        self.ticks = [FastTicks(e.client, self.name).__enter__() for e in self.engines.values()]
        for host in HOSTS:
            self.start_agent(host)

    def start_agent(self, host: str) -> None:
        store = ",".join(f"http://{p.address}" for p in self.proxies[host])
        self.agents[host] = common.start_daemon(
            self.config,
            self.name,
            self.state,
            self.state / f"agent-{host}.log",
            host=host,
            listen=self.listen[host],
            docker_url=self.engines[host].url,
            store=store,
            log_level=self.log_level,
        )

    def lockless(self, node: str) -> bool:
        """`node` is healthy and holds no shard lock, as the agent that runs it publishes it."""
        doc = View(self.agents[self.hosts[node]].url).get() or {}
        mine = next((n for n in doc.get("nodes", []) if n.get("name") == node), {})
        lease = mine.get("lease") or {}
        return mine.get("state") == "healthy" and not lease.get("shards") and not lease.get("held")

    def keep_logs(self) -> Path:
        """Copies of the agents' logs where `close` does not remove them (bench/.results)."""
        kept = common.report.RESULTS_DIR / f"{self.name}-agents"
        kept.mkdir(parents=True, exist_ok=True)
        for host in HOSTS:
            path = self.state / f"agent-{host}.log"
            if path.exists():
                (kept / path.name).write_bytes(path.read_bytes())
        return kept

    def logs(self) -> dict[str, list[dict[str, Any]]]:
        """host -> its agent's log lines (JSON; every run of it, appended)."""
        found: dict[str, list[dict[str, Any]]] = {}
        for host in HOSTS:
            path = self.state / f"agent-{host}.log"
            lines = path.read_text(errors="replace").splitlines() if path.exists() else []
            found[host] = []
            for line in lines:
                try:
                    found[host].append(json.loads(line))
                except ValueError:
                    continue
        return found

    def client(self, node: str) -> docker.DockerClient:
        return self.engines[self.hosts[node]].client

    def clients(self) -> list[docker.DockerClient]:
        return [e.client for e in self.engines.values()]

    def watched(self, host: str) -> Proxy | None:
        """The proxy `host`'s agent follows its watch through (None while it cannot say)."""
        doc = View(self.agents[host].url).get()
        where = (doc or {}).get("coordination", {}).get("watch")
        return next((p for p in self.proxies[host] if where == f"http://{p.address}"), None)

    def nodes_of(self, host: str) -> list[str]:
        return [name for name, h in self.hosts.items() if h == host]

    def healthy_everywhere(self) -> bool:
        for daemon in self.agents.values():
            doc = View(daemon.url).get()
            if doc is None or doc["cluster"]["state"] != "healthy":
                return False
            if sum(1 for a in doc["agents"] if a["state"] == "up") != len(HOSTS):
                return False
        return True

    def wait_healthy(self, timeout_s: float = 240) -> None:
        common.wait_for(
            self.healthy_everywhere, timeout_s, "every agent seeing the whole cluster healthy", 0.25
        )

    def close(self) -> None:
        for ticks in self.ticks:
            ticks.__exit__()
        for daemon in self.agents.values():
            daemon.stop()
        for proxies in self.proxies.values():
            for proxy in proxies:
                proxy.close()
        if self.pool is not None:
            self.pool.close()
        common.cleanup(self.name, self.state)


def steadily_healthy(views: list[View], node: str, for_s: float, timeout_s: float) -> None:
    """Wait until every view has shown `node` healthy for `for_s` in a row (it may flap between
    healthy and reopening while its shards come back)."""
    deadline, since = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        if all(v.states().get(node) == "healthy" for v in views):
            since = since or time.monotonic()
            if time.monotonic() - since >= for_s:
                return
        else:
            since = None
        time.sleep(0.1)
    raise TimeoutError(f"{node} not steadily healthy within {timeout_s}s")


def measure_change(m: Machines, samples: int) -> tuple[dict[str, list[float]], int]:
    """A host-1 CeresDB node SIGKILLed: ms until host 1's and host 3's /v1/cluster show it not
    healthy; and how many kills were discarded (the node left `healthy` before the kill)."""
    seen: dict[str, list[float]] = {HOSTS[0]: [], HOSTS[2]: []}
    targets = [n for n in m.nodes_of(HOSTS[0]) if n.startswith("db")]
    discarded, i = 0, 0
    while len(seen[HOSTS[2]]) < samples and discarded <= samples:
        node = targets[i % len(targets)]
        i += 1
        steadily_healthy([View(m.agents[host].url) for host in seen], node, 2, 180)
        pid = common.main_pid(m.client(node), f"ceres-{m.name}-{node}")
        with ThreadPoolExecutor(len(seen)) as pool:
            watchers = {
                host: pool.submit(
                    first_time,
                    View(m.agents[host].url),
                    lambda s, node=node: s.get(node, "healthy") != "healthy",
                    10,
                    0.005,
                )
                for host in seen
            }
            time.sleep(0.1)  # both watchers polling
            killed = time.time()
            os.kill(pid, signal.SIGKILL)
            times = {host: (watcher.result() - killed) * 1000 for host, watcher in watchers.items()}
        if min(times.values()) < 0:
            discarded += 1
            print(f"change on {node} discarded: it left healthy before the kill", flush=True)
            continue
        for host, elapsed in times.items():
            seen[host].append(elapsed)
        print(
            f"change {len(seen[HOSTS[2]])}/{samples} ({node}): host 1 {times[HOSTS[0]]:.0f} ms, "
            f"host 3 {times[HOSTS[2]]:.0f} ms",
            flush=True,
        )
    return seen, discarded


def measure_agent_down(m: Machines, samples: int) -> list[dict[str, float]]:
    """An agent SIGKILLed: s until each other agent shows all its nodes `unknown`."""
    out = []
    for i in range(samples):
        victim = HOSTS[(i + 1) % len(HOSTS)]
        mine = m.nodes_of(victim)
        m.wait_healthy()
        with ThreadPoolExecutor(len(HOSTS) - 1) as pool:
            watchers = {
                host: pool.submit(
                    first_time,
                    View(m.agents[host].url),
                    lambda s, mine=mine: all(s.get(n) == "unknown" for n in mine),
                    AGENT_TTL_S + 20,
                    0.02,
                )
                for host in HOSTS
                if host != victim
            }
            time.sleep(0.1)
            killed = time.time()
            os.kill(m.agents[victim].process.pid, signal.SIGKILL)
            m.agents[victim].process.wait(10)
            sample = {host: watcher.result() - killed for host, watcher in watchers.items()}
        out.append(sample)
        print(
            f"agent {victim} killed: its nodes unknown after "
            + ", ".join(f"{s:.2f} s on {h}" for h, s in sample.items()),
            flush=True,
        )
        m.start_agent(victim)
    m.wait_healthy()
    return out


def measure_docker_frozen(m: Machines, samples: int) -> list[dict[str, float]]:
    """A machine's Docker Engine frozen: s until each other agent shows all its nodes `unknown`."""
    out = []
    for i in range(samples):
        victim = HOSTS[(i + 1) % len(HOSTS)]
        mine = m.nodes_of(victim)
        m.wait_healthy()
        with ThreadPoolExecutor(len(HOSTS) - 1) as pool:
            watchers = {
                host: pool.submit(
                    first_time,
                    View(m.agents[host].url),
                    lambda s, mine=mine: all(s.get(n) == "unknown" for n in mine),
                    AGENT_TTL_S + 20,
                    0.02,
                )
                for host in HOSTS
                if host != victim
            }
            time.sleep(0.1)
            frozen = time.time()
            m.engines[victim].freeze()
            try:
                sample = {host: watcher.result() - frozen for host, watcher in watchers.items()}
            finally:
                m.engines[victim].thaw()
        out.append(sample)
        print(
            f"docker on {victim} frozen: its nodes unknown after "
            + ", ".join(f"{s:.2f} s on {h}" for h, s in sample.items()),
            flush=True,
        )
    m.wait_healthy()
    return out


def cluster_latency(url: str, n: int) -> list[float]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    latencies = []
    for _ in range(n):
        started = time.perf_counter()
        conn.request("GET", "/v1/cluster")
        response = conn.getresponse()
        response.read()
        latencies.append((time.perf_counter() - started) * 1000)
        assert response.status == 200, response.status
    conn.close()
    return latencies


def main(changes: int, agent_kills: int, idle_s: int) -> None:
    run = common.Run("cluster", [str(changes), str(agent_kills), str(idle_s)])
    settings = common.changed_settings(SETTINGS)
    m = Machines()
    try:
        m.start()
        m.wait_healthy()
        time.sleep(5)  # start-up work settled
        idle = common.measure_idle([m.agents[h].process.pid for h in HOSTS], idle_s)
        latency = {host: cluster_latency(m.agents[host].url, 1000) for host in HOSTS}
        change, discarded = measure_change(m, changes)
        down = measure_agent_down(m, agent_kills)
        frozen = measure_docker_frozen(m, agent_kills)
    finally:
        m.close()

    note = (
        f"Three agents on one machine (2 cores shared by 3 daemons and 9 containers), CeresDB {VERSION} "
        "stand-ins; the meta stand-ins' scheduler tick is 0.5 s (real: 5 s) so that shards reopen sooner "
        "between samples (testkit.standins.FastTicks)."
    )
    run.table(
        f"Several machines: idle cost per agent, 3 meta + 6 CeresDB healthy ({idle_s} s)",
        ["agent (--host)", "its nodes", "CPU s", "% of one core", "RSS MiB (max)"],
        [
            [host, ", ".join(m.nodes_of(host)), f"{i.cpu_s:.3f}", f"{i.percent:.2f}", f"{i.rss_max_mib:.1f}"]
            for host, i in zip(HOSTS, idle, strict=True)
        ],
        settings,
        note + f" Each agent keeps its etcd lease alive every agent_ttl/3 ({AGENT_TTL_S / 3:.1f} s) "
        "and watches the others' records.",
    )
    rows = []
    for host, values in latency.items():
        s = summary(values)
        rows.append([host, s["n"], *(f"{s[k]:.2f}" for k in ("min", "median", "p95", "p99", "max"))])
    worst_median = max(summary(v)["median"] for v in latency.values())
    run.table(
        "Several machines: GET /v1/cluster latency, idle cluster",
        ["agent", "n", "min ms", "median ms", "p95 ms", "p99 ms", "max ms"],
        rows,
        settings,
        "Sequential requests on one keep-alive connection, one agent after the other. Target: median under 10 ms.",
    )
    run.target(
        "cluster-latency",
        f"median {worst_median:.2f} ms on the slowest agent, p99 "
        f"{max(summary(v)['p99'] for v in latency.values()):.2f} ms (n=1000 each)",
        worst_median < 10,
        settings,
    )

    s1, s3 = summary(change[HOSTS[0]]), summary(change[HOSTS[2]])
    run.table(
        "Several machines: a host-1 CeresDB node SIGKILLed, seen not healthy in /v1/cluster",
        ["seen on", "n", "min ms", "median ms", "p95 ms", "max ms"],
        [
            [f"{label} ({host})", s["n"], *(common.ms(s[k]) for k in ("min", "median", "p95", "max"))]
            for label, host, s in (
                ("host 1, its own agent", HOSTS[0], s1),
                ("host 3, another agent", HOSTS[2], s3),
            )
        ],
        settings,
        note + " Each kill follows 2 s of the node `healthy` in both views; from the kill to the first "
        f"answer showing it in another state (polled every 5 ms). Kills discarded because the node left "
        f"`healthy` before the kill (reopening its shards): {discarded}. Target: host 3 median under 250 ms.",
    )
    run.target(
        "cluster-change",
        f"{s3['median']:.0f} ms median on host 3, {s3['p95']:.0f} ms p95 (n={s3['n']}); "
        f"host 1 itself: {s1['median']:.0f} ms",
        s3["median"] < 250,
        settings,
    )

    observers = sorted({h for sample in down for h in sample})
    rows = []
    for host in observers:
        s = summary([sample[host] for sample in down if host in sample])
        rows.append([host, s["n"], *(f"{s[k]:.2f}" for k in ("min", "median", "max"))])
    both = summary([max(sample.values()) for sample in down])
    rows.append(["both other agents", both["n"], *(f"{both[k]:.2f}" for k in ("min", "median", "max"))])
    run.table(
        "Several machines: an agent SIGKILLed, its nodes `unknown` on the others",
        ["seen on", "n", "min s", "median s", "max s"],
        rows,
        settings,
        f"Agents on hosts 2, 3, 1 killed in turn; the others watch their records in etcd, bound to the dead "
        f"agent's lease (TTL agent_ttl = {AGENT_TTL_S} s, kept alive every {AGENT_TTL_S / 3:.1f} s, so it "
        f"expires {AGENT_TTL_S * 2 / 3:.1f}-{AGENT_TTL_S} s after the kill). Polled every 20 ms. Target: within "
        f"agent_ttl + 1 s = {AGENT_TTL_S + 1} s.",
    )
    run.target(
        "cluster-agent",
        f"{both['median']:.2f} s median, {both['max']:.2f} s at most, on both other agents "
        f"(n={both['n']}; agent_ttl {AGENT_TTL_S} s)",
        both["max"] <= AGENT_TTL_S + 1,
        settings,
    )

    rows = []
    for host in sorted({h for sample in frozen for h in sample}):
        s = summary([sample[host] for sample in frozen if host in sample])
        rows.append([host, s["n"], *(f"{s[k]:.2f}" for k in ("min", "median", "max"))])
    both = summary([max(sample.values()) for sample in frozen])
    rows.append(["both other agents", both["n"], *(f"{both[k]:.2f}" for k in ("min", "median", "max"))])
    run.table(
        "Several machines: one machine's Docker Engine frozen, its nodes `unknown` on the others",
        ["seen on", "n", "min s", "median s", "max s"],
        rows,
        settings,
        f"The dockerd of hosts 2, 3, 1 in turn SIGSTOPped (its containers keep running); its agent's observation "
        f"of Docker times out after agent_ttl/3 and the cycle publishes its nodes `unknown`. Polled every 20 ms. "
        f"Target: within agent_ttl + 1 s = {AGENT_TTL_S + 1} s.",
    )
    run.target(
        "cluster-docker-frozen",
        f"{both['median']:.2f} s median, {both['max']:.2f} s at most, on both other "
        f"agents (n={both['n']}; agent_ttl {AGENT_TTL_S} s)",
        both["max"] <= AGENT_TTL_S + 1,
        settings,
    )
    run.save()


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    main(*(args + [20, 5, 60][len(args) :]))
