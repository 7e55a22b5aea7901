"""CeresMeta's configuration: defaults, then the TOML file, then the environment (META v1.2.2:
cmd/meta/main.go:30-60, server/config/config.go).

- The file is read with pelletier/go-toml v2 (v2.0.6, META v1.2.2:go.mod): unknown keys are ignored,
  a wrong type fails, and a key matches a field's tag exactly or else case-insensitively
  (go-toml v2.0.6 unmarshaler.go:1157-1185), so `STORAGE-ROOT-PATH` sets `storage-root-path`; when
  both spellings are given the later one in the file wins.
- A file that cannot be read fails too (config.go:313-333: "read config file").
- Every failure is a `panicf` in main: Go's exit code 2.
"""

from __future__ import annotations

import os
import socket
import sys
import tomllib

import common
import scheduling

FLAVOR, VERSION = common.release()
V2 = VERSION >= (2, 0, 0)
HTTP_PORT_KEY, HTTP_PORT_ENV = (
    ("default-http-port", "DEFAULT_HTTP_PORT") if VERSION < (1, 2, 7) else ("http-port", "HTTP_PORT")
)


def panic(message: str) -> None:
    """A Go panic: message on stderr, exit code 2."""
    print(f"panic: {message}", file=sys.stderr, flush=True)
    os._exit(2)


def lookup(table: dict[str, object], key: str) -> object:
    """go-toml v2's field matching: an exact match or a case-insensitive one; the last key of the
    table that matches wins (keys are decoded in document order)."""
    found: object = None
    for name, value in table.items():
        if name == key or name.lower() == key:
            found = value
    return found


def load(path: str) -> dict[str, object]:
    hostname = socket.gethostname()
    prefix = "horaemeta" if V2 else "ceresmeta"
    keys: dict[str, tuple[str, object]] = {
        "node-name": ("NODE_NAME", f"{prefix}-{hostname}"),
        "data-dir": ("DATA_DIR", f"/tmp/{prefix}"),
        "storage-root-path": ("STORAGE_ROOT_PATH", "/horaedb" if V2 else "/ceresdb"),
        "initial-cluster": ("INITIAL_CLUSTER", ""),
        "initial-cluster-state": ("INITIAL_CLUSTER_STATE", "new"),
        "initial-cluster-token": ("INITIAL_CLUSTER_TOKEN", f"{prefix}-cluster"),
        "client-urls": ("CLIENT_URLS", "http://0.0.0.0:2379"),
        "peer-urls": ("PEER_URLS", "http://0.0.0.0:2380"),
        "advertise-client-urls": ("ADVERTISE_CLIENT_URLS", "http://0.0.0.0:2379"),
        "advertise-peer-urls": ("ADVERTISE_PEER_URLS", "http://0.0.0.0:2380"),
        "default-cluster-name": ("DEFAULT_CLUSTER_NAME", "defaultCluster"),
        "default-cluster-node-count": ("DEFAULT_CLUSTER_NODE_COUNT", 2),
        "default-cluster-shard-total": ("DEFAULT_CLUSTER_SHARD_TOTAL", 8),
        "topology-type": ("TOPOLOGY_TYPE", "static"),
        "etcd-start-timeout-ms": ("ETCD_START_TIMEOUT_MS", 60000),
        "lease-sec": ("LEASE_SEC", 10),
        "tick-interval-ms": ("TICK_INTERVAL_MS", 500),
        "election-timeout-ms": ("ELECTION_TIMEOUT_MS", 3000),
        "id-allocator-step": ("ID_ALLOCATOR_STEP", 20),
        "enable-schedule": ("ENABLE_SCHEDULE", True),
        HTTP_PORT_KEY: (HTTP_PORT_ENV, 8080),
    }
    if VERSION >= (1, 2, 4):  # META v1.2.4:server/config/config.go:57,133
        keys["procedure-executing-batch-size"] = (
            "PROCEDURE_EXECUTING_BATCH_SIZE",
            scheduling.DEFAULT_BATCH_SIZE,
        )
    document: dict[str, object] = {}
    try:
        with open(path, "rb") as handle:
            document = tomllib.load(handle)
    except OSError as err:
        panic(
            f"fail to parse config from toml file, err:read config file, configFile:{path}: "
            f"open {path}: {(err.strerror or str(err)).lower()}"
        )
    except tomllib.TOMLDecodeError as err:
        panic(f"fail to parse config from toml file, err:unmarshal toml config, configFile:{path}: {err}")
    # The seam for ceres_supervisor/desired/serverschema.py: go-toml fails on a wrong type, never on an
    # unknown key.
    for segments, kind, message in common.schema_violations(document, "meta", VERSION, "meta") or []:
        if kind == "type":
            panic(f"toml: {'.'.join(segments)}: {message}")
    for struct_env in ("LOG", "ETCD_LOG", "FLOW_LIMITER"):
        if os.environ.get(struct_env):
            panic(
                f"fail to parse config from environment variable, err:env: parse error on field of type struct: {struct_env}"
            )
    config: dict[str, object] = {}
    for key, (env, default) in keys.items():
        value = lookup(document, key)
        if value is None:
            value = default
        if isinstance(default, bool):
            if not isinstance(value, bool):
                panic(f"toml: cannot decode {type(value).__name__} into bool for {key}")
        elif not isinstance(value, type(default)) or isinstance(value, bool):
            panic(f"toml: cannot decode {type(value).__name__} into {type(default).__name__} for {key}")
        if env in os.environ:  # the environment overrides the file, no prefix
            raw = os.environ[env]
            try:
                value = (
                    (raw.lower() in ("1", "true"))
                    if isinstance(default, bool)
                    else int(raw)
                    if isinstance(default, int)
                    else raw
                )
            except ValueError:
                panic(
                    f"fail to parse config from environment variable, err:env: parse error on field {env}: {raw!r}"
                )
        config[key] = value
    if not config["initial-cluster"]:
        config["initial-cluster"] = f"{config['node-name']}=http://0.0.0.0:2380"
    level = os.environ.get("LEVEL")
    for table in ("log", "etcd-log"):
        section = lookup(document, table)
        file_level = lookup(section, "level") if isinstance(section, dict) else None
        config[f"{table}.level"] = level or (file_level if isinstance(file_level, str) else "info")
    return config
