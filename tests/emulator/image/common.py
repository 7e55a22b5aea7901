"""Shared by both stand-ins: the emulated release, logging, durations, small HTTP helpers."""

from __future__ import annotations

import json
import re
import sys
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

HERE = Path(__file__).resolve().parent
EMULATOR_PREFIX = b"/ceres-emulator/clusters/"
"""etcd prefix standing in for meta's gRPC: cluster records, heartbeats (see README)."""


def release() -> tuple[str, tuple[int, int, int]]:
    """(flavor, version) baked into the image at build time."""
    text = (HERE / "VERSION").read_text().strip()
    major, minor, patch = (int(x) for x in text.split("."))
    return ("horaedb" if major >= 2 else "ceresdb"), (major, minor, patch)


def log(component: str, message: str, **fields: object) -> None:
    extra = " ".join(f"{k}={v}" for k, v in fields.items())
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    print(f"{stamp} {component} {message} {extra}".rstrip(), file=sys.stdout, flush=True)


_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d)$")
_FACTOR = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """CeresDB's duration syntax: lowercase units only."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise ValueError(f"invalid duration {text!r}")
    return int(match.group(1)) * _FACTOR[match.group(2)]


class JsonHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        return

    def send_json(self, status: int, payload: object) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    body: bytes = b""

    def read_json(self) -> dict[str, object]:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b"{}"
        self.body = raw
        try:
            value = json.loads(raw or b"{}")
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}
