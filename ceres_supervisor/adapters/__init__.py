"""Adapters to the systems outside: one module per system, as Patroni's `dcs/`.

`engine` is the only module of the project that imports `docker` (`dockerread` turns its answers
into ours: a container inspected, an event); `etcd` speaks etcd's v3 JSON
gateway, `snapshots` reads a member's snapshot through it, `etcdutl` runs etcd's own tool on
snapshot files; `bodies` reads HTTP answers whole; `systemd` speaks sd_notify; `logs` configures
structlog.
May import: `model`, `desired`. Decides nothing: each call is one operation on one system.
"""
