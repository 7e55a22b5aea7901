"""Pause records as the store's view reads them (`view.apply`): what an empty or `{}` record means,
and what an operator reads under `coordination.unreadable` of /v1/cluster when another agent wrote a
record this one cannot parse. Pure, no etcd."""

from __future__ import annotations

import json

from ceres_supervisor.adapters.etcd import KeyValue
from ceres_supervisor.cluster import view as views
from ceres_supervisor.cluster.view import StoreView

ROOT = views.prefix("c")


def read(records: dict[str, bytes]) -> StoreView:
    """The view of a full read holding these keys (name under the cluster's prefix -> raw value)."""
    kvs = [KeyValue(ROOT + name.encode(), raw, 1, 1, 0) for name, raw in records.items()]
    return views.apply(StoreView(), ROOT, views.puts(kvs), 5, reset=True)


def test_an_empty_pause_record_is_a_pause() -> None:
    """Earlier versions said "paused" by the key alone: a record with no value at all is a pause,
    not something unreadable (that would drop the operator's pause from every machine's view)."""
    view = read({"paused/db0": b"", "paused": b""})
    assert view.paused == {"db0"} and view.all_paused is True
    assert view.malformed == {}


def test_a_pause_record_that_is_not_an_object_says_so() -> None:
    """The reason shown to the operator names what is wrong with the record, word for word."""
    view = read({"paused/db0": b"[true]", "paused": b'"yes"'})
    assert view.pauses == {} and view.all_paused is None
    assert view.malformed == {
        "paused/db0": "cannot parse: not an object",
        "paused": "cannot parse: not an object",
    }


def test_a_pause_record_whose_flag_is_not_a_boolean_says_so() -> None:
    view = read({"paused/db0": json.dumps({"paused": "true"}).encode(), "paused": b'{"paused": 1}'})
    assert view.pauses == {} and view.all_paused is None
    assert view.malformed == {
        "paused/db0": "cannot parse: paused is not a boolean",
        "paused": "cannot parse: paused is not a boolean",
    }
