"""Every statement the storage runs must use an index on the big tables."""

import re
import sqlite3

import pytest

from fuseline_broker.storage.base import Settings
from fuseline_broker.storage.sqlite import SQLiteStorage

from .conftest import load_workflow
from .test_storage import FakeClock, report

#: Tables that grow with history; a plan line scanning one of them without an
#: index means a request whose cost grows with the database.
BIG_TABLES = ("steps", "queue", "instances", "assignments")
FULL_SCAN = re.compile(rf"^SCAN ({'|'.join(BIG_TABLES)})(?! USING)")


def exercise(storage, clock):
    """Drive every storage operation the HTTP API can call."""
    storage.save_repository(
        {"name": "r", "url": "u", "workflows": ["a:b"], "credentials": {"k": "v"}}
    )
    storage.get_repository("r")
    storage.list_repositories(0, 10)
    storage.list_workflow_entries()

    chain = load_workflow("chain_five")
    diamond = load_workflow("diamond_and_join")
    or_join = load_workflow("or_join")
    worker = storage.register_worker([chain, diamond, or_join])
    other = storage.register_worker([chain])
    storage.touch_worker(worker)
    for workflow in (chain, diamond, or_join):
        storage.dispatch(workflow, {"a": 1, "b": 2})

    first = storage.take_step(worker)
    storage.report_step(worker, report(first, "SUCCEEDED", 1))
    storage.report_step(worker, report(first, "SUCCEEDED", 1))
    second = storage.take_step(worker)
    storage.report_step(worker, report(second, "FAILED"))
    held = storage.take_step(worker)
    clock.advance(10_000)
    retaken = storage.take_step(other) or storage.take_step(worker)
    storage.report_step(worker, report(held, "SUCCEEDED"))
    if retaken is not None:
        storage.report_step(retaken_owner(storage, retaken), report(retaken))
    while (assignment := storage.take_step(worker)) is not None:
        storage.report_step(worker, report(assignment, "SKIPPED"))
    clock.advance(2)
    storage.take_step(worker)

    storage.list_workers()
    for workflow_id in (None, "chain"):
        for state in (None, "RUNNING", "FAILED"):
            page = storage.list_instances(workflow_id, state, 0, 5)
    storage.get_instance(
        page.items[0]["instance_id"] if page.items else first.instance_id
    )
    storage.purge_finished(clock() + 1, 10)
    storage.purge_workers(clock() + 1, 10)


def retaken_owner(storage, assignment):
    instance = storage.get_instance(assignment.instance_id)
    return instance["steps"][assignment.step_name]["worker_id"]


@pytest.fixture
def traced(tmp_path):
    clock = FakeClock()
    storage = SQLiteStorage(
        tmp_path / "broker.db", Settings(step_timeout=100.0), clock=clock
    )
    storage.initialize()
    statements = []
    storage._connection().set_trace_callback(statements.append)
    exercise(storage, clock)
    storage.close()
    return tmp_path / "broker.db", statements


def plan_lines(database, statement):
    with sqlite3.connect(database) as conn:
        rows = conn.execute(f"explain query plan {statement}").fetchall()
    return [row[3] for row in rows]


def test_statements_were_traced(traced):
    _, statements = traced
    text = "\n".join(statements)
    for fragment in (
        "from queue",
        "update steps",
        "from instances",
        "returning",
        "from workers where last_seen",
    ):
        assert fragment in text


def test_no_full_scan_of_big_tables(traced):
    database, statements = traced
    scans = []
    for statement in sorted(set(statements)):
        if not re.match(r"\s*(select|update|delete)", statement, re.IGNORECASE):
            continue
        for line in plan_lines(database, statement):
            if FULL_SCAN.match(line):
                scans.append((line, statement))
    assert scans == []
