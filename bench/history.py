"""Pre-fill a broker's SQLite file with finished runs and a queued backlog.

The rows match those that SQLiteStorage leaves behind. A finished instance
has every step SUCCEEDED after one assignment, and its queue rows are gone.
A queued instance is RUNNING, and its starting steps are QUEUED with a row
in the queue. Use this only on a database whose broker the benchmark started.
"""

import json
import sqlite3
import time
import uuid

from shapes import INPUTS, step_result, topological_order

from fuseline_broker import config, dag

#: Instances written per transaction.
CHUNK = 5000
#: The pre-filled runs are spread over this many seconds before now.
HISTORY_SPAN = 3600.0
#: Seconds between the handout and the report of a pre-filled step.
STEP_DURATION = 0.001

INSERT_INSTANCE = (
    "insert into instances (instance_id, workflow_id, version, state, inputs,"
    " created_at, finished_at) values (?, ?, ?, ?, ?, ?, ?)"
)


def _dumps(value):
    """Serialize JSON as the storage does: compact separators."""
    return json.dumps(value, separators=(",", ":"))


def broker_timing():
    """Return the broker's ``(step_timeout, step_grace)`` read from the environment."""
    values = {}
    config.load_environment(values)
    resolved = config.resolve(values)
    return resolved["STEP_TIMEOUT"], resolved["STEP_GRACE"]


def finished_run_steps(workflow):
    """Return ``(step_name, result)`` of a run in handout order, all SUCCEEDED."""
    results = {}
    for name in topological_order(workflow):
        step = workflow["steps"][name]
        payload = {
            "workflow_inputs": INPUTS,
            "results": {p: results[p] for p in step["predecessors"]},
        }
        results[name] = step_result(name, workflow, payload)
    return list(results.items())


def prefill(database, workflow, backlog_workflow, worker_id, finished_steps, queued):
    """Write finished runs of ``workflow`` and queued runs of ``backlog_workflow``.

    Writes ``finished_steps // len(steps)`` finished instances, each with all
    its steps, and ``queued`` instances of the backlog workflow. Both
    definitions and ``worker_id`` must already be registered through the API.
    Returns the counts written.
    """
    conn = sqlite3.connect(database, timeout=60, isolation_level=None)
    conn.execute("pragma busy_timeout = 60000")
    conn.execute("pragma synchronous = NORMAL")
    steps_of_run = finished_run_steps(workflow)
    finished = finished_steps // len(steps_of_run)
    total = finished + queued
    spacing = HISTORY_SPAN / max(total, 1)
    first_at = time.time() - HISTORY_SPAN
    timing = broker_timing()
    try:
        for start in range(0, finished, CHUNK):
            count = min(CHUNK, finished - start)
            times = [first_at + (start + i) * spacing for i in range(count)]
            _write_finished(conn, workflow, steps_of_run, worker_id, times, timing)
        _advance_queue_sequence(conn, finished * len(steps_of_run))
        for start in range(0, queued, CHUNK):
            count = min(CHUNK, queued - start)
            offset = finished + start
            times = [first_at + (offset + i) * spacing for i in range(count)]
            _write_queued(conn, backlog_workflow, times)
        conn.execute("pragma wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return {
        "finished_instances": finished,
        "finished_steps": finished * len(steps_of_run),
        "queued_instances": queued,
    }


def _write_finished(conn, workflow, steps_of_run, worker_id, times, timing):
    """Insert one transaction of finished instances with their steps and handouts."""
    key = dag.definition_key(workflow)
    inputs = _dumps(INPUTS)
    instances, steps, assignments = [], [], []
    last_task = None

    for created_at in times:
        instance_id = uuid.uuid4().hex
        at = created_at
        for name, result in steps_of_run:
            at += STEP_DURATION
            budget = dag.step_budget(workflow["steps"][name], *timing)
            expires_at = at + budget
            finished_at = at + STEP_DURATION
            steps.append(
                (instance_id, name, dag.SUCCEEDED, 1, worker_id, at, expires_at)
                + (finished_at, _dumps(result), 0)
            )
            assignments.append((instance_id, name, 1, worker_id, at, expires_at))
        instances.append(
            (instance_id, *key, dag.SUCCEEDED, inputs, created_at, finished_at)
        )
        last_task = (instance_id, name, finished_at)

    conn.execute("begin immediate")
    conn.executemany(INSERT_INSTANCE, instances)
    conn.executemany(
        "insert into steps (instance_id, step_name, state, attempts, worker_id,"
        " assigned_at, expires_at, finished_at, result, timed_out)"
        " values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        steps,
    )
    conn.executemany(
        "insert into assignments (instance_id, step_name, attempt, worker_id,"
        " assigned_at, expires_at) values (?, ?, ?, ?, ?, ?)",
        assignments,
    )
    _record_last_task(conn, key, worker_id, last_task)
    conn.execute("commit")


def _record_last_task(conn, key, worker_id, last_task):
    """Set the worker row as the storage does after the worker's last report."""
    instance_id, step_name, finished_at = last_task
    task = {
        "workflow_id": key[0],
        "instance_id": instance_id,
        "step_name": step_name,
        "success": True,
    }
    conn.execute(
        "update workers set last_seen = ?, last_task = ? where worker_id = ?",
        (finished_at, _dumps(task), worker_id),
    )


def _advance_queue_sequence(conn, steps_queued):
    """Advance the queue's ``seq`` counter past the rows the finished steps used.

    The queue's ``seq`` is AUTOINCREMENT, so each step that was queued and
    then handed out moved ``sqlite_sequence`` forward by one.
    """
    conn.execute("begin immediate")
    updated = conn.execute(
        "update sqlite_sequence set seq = seq + ? where name = 'queue'",
        (steps_queued,),
    ).rowcount
    if not updated:
        conn.execute(
            "insert into sqlite_sequence (name, seq) values ('queue', ?)",
            (steps_queued,),
        )
    conn.execute("commit")


def _write_queued(conn, workflow, times):
    """Insert one transaction of RUNNING instances whose starting steps are queued."""
    key = dag.definition_key(workflow)
    inputs = _dumps(INPUTS)
    starting = set(dag.starting_steps(workflow))
    instances, steps, queue_rows = [], [], []
    for created_at in times:
        instance_id = uuid.uuid4().hex
        instances.append((instance_id, *key, "RUNNING", inputs, created_at, None))
        for name in workflow["steps"]:
            state = dag.QUEUED if name in starting else dag.PENDING
            steps.append((instance_id, name, state))
        for name in dag.starting_steps(workflow):
            queue_rows.append((*key, instance_id, name))
    conn.execute("begin immediate")
    conn.executemany(INSERT_INSTANCE, instances)
    conn.executemany(
        "insert into steps (instance_id, step_name, state) values (?, ?, ?)", steps
    )
    conn.executemany(
        "insert into queue (workflow_id, version, instance_id, step_name)"
        " values (?, ?, ?, ?)",
        queue_rows,
    )
    conn.execute("commit")
