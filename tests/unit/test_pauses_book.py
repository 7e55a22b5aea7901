"""The pause book by itself: what a pause or resume does to the pauses in force, what change it
queues for the store, what it leaves on disk, what an unreadable book tells the operator, and what
the book writes back to a store that forgot it. Pure (a temporary state_dir, no store)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ceres_supervisor.operations.pauses import PauseBook, PauseFileError, Pauses

ADVICE = "fix or remove it, knowing that removing it resumes the nodes paused on this machine"


def test_pausing_everything_keeps_the_node_pauses_and_resuming_everything_clears_them() -> None:
    """The node pauses asked before a `pause --all` are kept under it (it adds to them, it does not
    replace them); a `resume --all` clears both."""
    some = Pauses(False, frozenset({"db0"}))
    assert some.change(frozenset(), True, True) == Pauses(True, frozenset({"db0"}))
    assert some.change(frozenset(), False, True) == Pauses(False, frozenset())


def test_a_resume_of_a_node_lifts_its_pause_only() -> None:
    pauses = Pauses(True, frozenset({"db0", "db1"}))
    assert pauses.change(frozenset({"db0"}), False, False) == Pauses(True, frozenset({"db1"}))
    assert pauses.change(frozenset({"db2"}), True, False) == Pauses(True, frozenset({"db0", "db1", "db2"}))


def test_a_queued_change_names_the_nodes_asked_not_those_paused_before(tmp_path: Path) -> None:
    """Only `resume --all` names every node paused before it (so that the store clears them too);
    a pause or resume of a node names that node, and `pause --all` no node."""
    book = PauseBook.open(str(tmp_path))
    book.apply(frozenset({"db0"}), True, False)
    assert book.apply(frozenset({"db1"}), True, False).nodes == {"db1"}
    assert book.apply(frozenset({"db1"}), False, False).nodes == {"db1"}
    assert book.apply(frozenset(), True, True).nodes == frozenset()
    assert book.apply(frozenset(), False, True).nodes == {"db0"}


def test_a_cluster_wide_pause_survives_a_restart(tmp_path: Path) -> None:
    book = PauseBook.open(str(tmp_path))
    book.apply(frozenset(), True, True)
    book.pushed(1)
    assert PauseBook.open(str(tmp_path)).current == Pauses(True, frozenset())


def test_a_book_without_all_is_no_cluster_wide_pause_and_stays_readable(tmp_path: Path) -> None:
    """A book written by hand (or by an earlier version) may leave `all` out: that is no cluster-wide
    pause, and the book written after the next change reads back the same."""
    (tmp_path / "paused.json").write_text(json.dumps({"nodes": ["db0"]}))
    book = PauseBook.open(str(tmp_path))
    assert book.current == Pauses(False, frozenset({"db0"}))
    book.apply(frozenset({"db1"}), True, False)
    assert PauseBook.open(str(tmp_path)).current == Pauses(False, frozenset({"db0", "db1"}))


@pytest.mark.parametrize("nodes", ["db0", [1], {"db0": True}])
def test_nodes_that_are_not_a_list_of_names_make_the_book_unreadable(tmp_path: Path, nodes: object) -> None:
    """A string would be read as the set of its letters; every such book is refused, and the error
    names the file, what is wrong and what removing it would do."""
    path = tmp_path / "paused.json"
    path.write_text(json.dumps({"all": False, "nodes": nodes}))
    with pytest.raises(PauseFileError) as raised:
        PauseBook.open(str(tmp_path))
    assert str(raised.value) == f"{path}: not a pause book ('nodes' is not a list of names); {ADVICE}"


def test_a_book_whose_all_is_not_a_boolean_says_so_word_for_word(tmp_path: Path) -> None:
    path = tmp_path / "paused.json"
    path.write_text(json.dumps({"all": "no", "nodes": []}))
    with pytest.raises(PauseFileError) as raised:
        PauseBook.open(str(tmp_path))
    assert str(raised.value) == f"{path}: not a pause book (not an object with a boolean 'all'); {ADVICE}"


def test_a_book_that_cannot_be_read_names_the_file_and_the_system_s_reason(tmp_path: Path) -> None:
    """Not `[Errno 21] Is a directory: '...'` with the path twice: the file, then the reason."""
    path = tmp_path / "paused.json"
    path.mkdir()
    with pytest.raises(PauseFileError) as raised:
        PauseBook.open(str(tmp_path))
    assert str(raised.value) == f"{path}: cannot be read: Is a directory"


def test_what_the_store_forgot_is_written_back_as_pauses(tmp_path: Path) -> None:
    """A store that came back without some of the file's pause records gets those back, as pauses:
    the nodes it has no record of, and the cluster-wide pause if it has none; each alone suffices."""
    book = PauseBook(tmp_path / "paused.json", Pauses(True, frozenset({"db0", "db1"})))
    node_only = book.unrecorded({"db1": True}, True)
    assert node_only is not None
    assert (node_only.nodes, node_only.pause, node_only.everything) == ({"db0"}, True, False)
    all_only = book.unrecorded({"db0": True, "db1": False}, None)
    assert all_only is not None
    assert (all_only.nodes, all_only.pause, all_only.everything) == (frozenset(), True, True)
    assert book.unrecorded({"db0": False, "db1": True}, False) is None
