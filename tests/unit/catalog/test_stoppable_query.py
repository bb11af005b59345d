"""A catalog query run in another thread and stopped from this one (Ctrl-C, a cancelled sync)."""

from __future__ import annotations

import threading

import duckdb
import pytest

from dlstudy.catalog.query import StoppableQuery

# Long enough to be running when stopped (minutes uninterrupted), stopped at once when asked.
_LONG = "SELECT sum(a.range * b.range) FROM range(1000000) a, range(1000000) b"


def test_a_query_stopped_before_its_thread_began_never_runs() -> None:
    """anyio skips a call cancelled before a worker thread took it: the stop must not wait for
    an end that never comes, and a late `run` must not start the query."""
    ran: list[int] = []
    db = duckdb.connect()
    query = StoppableQuery(db, lambda: ran.append(1))
    query.stop()  # returns: nothing began
    query.run()
    assert ran == [] and query.done.is_set()
    with pytest.raises(RuntimeError, match="never ran"):
        query.result()
    db.close()


def test_a_running_query_is_interrupted_and_the_connection_is_free_after() -> None:
    db = duckdb.connect()
    began = threading.Event()

    def work() -> object:
        began.set()
        return db.execute(_LONG).fetchall()

    query = StoppableQuery(db, work)
    thread = threading.Thread(target=query.run, daemon=True)
    thread.start()
    assert began.wait(30)
    query.stop()
    assert query.done.is_set()
    with pytest.raises(duckdb.InterruptException):
        query.result()
    assert db.execute("SELECT 42").fetchall() == [(42,)]
    thread.join(30)
    db.close()


def test_a_query_left_alone_gives_its_rows() -> None:
    db = duckdb.connect()
    query = StoppableQuery(db, lambda: db.execute("SELECT 1 + 1").fetchall())
    query.run()
    assert query.result() == [(2,)]
    query.stop()  # after the end: nothing to interrupt, returns at once
    db.close()
