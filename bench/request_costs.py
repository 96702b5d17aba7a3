"""Measure the CPU time of each request kind and of each SQL statement, in process.

One thread calls the WSGI apps directly, with no gunicorn, network or other
thread, so the figures show what the broker's own code costs per request,
without lock waits. The broker runs on a temporary SQLite file with its log
lines discarded. Other processes on the machine still change the figures,
so compare the ratio to the baseline app's cost within one run.

1. Request costs: ``--instances`` diamonds are dispatched, then one worker
   loops keep-alive, take a step and report until none is left. The CPU
   time of each call is summed per request kind. The baseline app's GET
   route is timed the same way. Each figure is the lowest of ``--repeats``
   runs, the one least disturbed by other processes.
2. Statement costs: the same cycle on the storage alone (no HTTP), with
   every ``execute`` and its fetch timed, gives the SQL time per step by
   statement.
"""

import argparse
import io
import json
import logging
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import baseline_app
from shapes import INPUTS, build_workflow, success_report

from fuseline_broker import create_app

REQUEST_KINDS = ("keep_alive", "get_step", "report")


def wsgi_environ(method, path, query="", body=b""):
    """Return a WSGI environ like gunicorn's for one request."""
    return {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "RAW_URI": f"{path}?{query}" if query else path,
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "127.0.0.1:8000",
        "CONTENT_TYPE": "application/json" if body else "",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }


def call(app, environ):
    """Run one request through a WSGI app and return its status line and body."""
    statuses = []

    def start_response(status, headers, exc_info=None):
        statuses.append(status)

    body = b"".join(app(environ, start_response))
    return statuses[0], body


def new_broker(folder):
    """Return a broker app on a new SQLite file in ``folder``."""
    database = Path(folder) / "broker.sqlite3"
    return create_app({"FUSELINE_BROKER_DATABASE": str(database)}, folder)


def request_costs(instances):
    """Return CPU microseconds per request kind and per baseline request."""
    workflow = build_workflow("diamond", 0)
    spent = dict.fromkeys(REQUEST_KINDS, 0.0)
    with tempfile.TemporaryDirectory(prefix="fuseline-costs-") as folder:
        app = new_broker(folder)
        register = wsgi_environ(
            "POST", "/worker/register", body=json.dumps([workflow]).encode()
        )
        query = "worker_id=" + json.loads(call(app, register)[1])
        dispatch = json.dumps({"workflow": workflow, "inputs": INPUTS}).encode()
        for _ in range(instances):
            call(app, wsgi_environ("POST", "/workflow/dispatch", body=dispatch))

        steps = 0
        while True:
            started = time.process_time()
            call(app, wsgi_environ("POST", "/worker/keep-alive", query))
            kept_alive = time.process_time()
            status, body = call(app, wsgi_environ("GET", "/workflow/step", query))
            took = time.process_time()
            spent["keep_alive"] += kept_alive - started
            spent["get_step"] += took - kept_alive
            if status.startswith("204"):
                break
            report = json.dumps(success_report(json.loads(body), workflow)).encode()
            started = time.process_time()
            status, _ = call(app, wsgi_environ("POST", "/workflow/step", query, report))
            spent["report"] += time.process_time() - started
            if not status.startswith("200"):
                raise RuntimeError(f"report failed with {status}")
            steps += 1

    baseline_requests = 3 * steps
    started = time.process_time()
    for _ in range(baseline_requests):
        call(baseline_app.app, wsgi_environ("GET", "/"))
    baseline = (time.process_time() - started) / baseline_requests

    costs = {kind: seconds / steps * 1e6 for kind, seconds in spent.items()}
    costs["step"] = sum(costs.values())
    costs["baseline_request"] = baseline * 1e6
    return costs


class TimedConnection:
    """A sqlite3 connection whose statements add their time to ``totals``."""

    def __init__(self, connection, totals):
        self._connection = connection
        self._totals = totals

    def execute(self, sql, parameters=()):
        started = time.perf_counter()
        cursor = self._connection.execute(sql, parameters)
        self._add(sql, time.perf_counter() - started)
        return TimedCursor(cursor, sql, self)

    def executemany(self, sql, rows):
        started = time.perf_counter()
        cursor = self._connection.executemany(sql, rows)
        self._add(sql, time.perf_counter() - started)
        return cursor

    def _add(self, sql, seconds, count=1):
        total = self._totals[sql]
        total[0] += count
        total[1] += seconds

    def __getattr__(self, name):
        return getattr(self._connection, name)


class TimedCursor:
    """A cursor whose fetches add their time to the statement that made it."""

    def __init__(self, cursor, sql, connection):
        self._cursor = cursor
        self._sql = sql
        self._connection = connection

    def fetchone(self):
        started = time.perf_counter()
        row = self._cursor.fetchone()
        self._connection._add(self._sql, time.perf_counter() - started, count=0)
        return row

    def fetchall(self):
        started = time.perf_counter()
        rows = self._cursor.fetchall()
        self._connection._add(self._sql, time.perf_counter() - started, count=0)
        return rows

    def __iter__(self):
        return iter(self.fetchall())

    def __getattr__(self, name):
        return getattr(self._cursor, name)


def statement_costs(instances):
    """Return (wall µs per step, {statement: (runs per step, µs per step)})."""
    workflow = build_workflow("diamond", 0)
    totals = defaultdict(lambda: [0, 0.0])
    with tempfile.TemporaryDirectory(prefix="fuseline-costs-") as folder:
        app = new_broker(folder)
        storage = app.extensions["fuseline_broker"].storage
        plain_connection = storage._connection
        storage._connection = lambda: TimedConnection(plain_connection(), totals)
        with app.app_context():
            worker_id = storage.register_worker([workflow])
            for _ in range(instances):
                storage.dispatch(workflow, INPUTS)
            totals.clear()
            steps = 0
            started = time.perf_counter()
            while (assignment := storage.take_step(worker_id)) is not None:
                report = success_report(assignment.to_wire(), workflow)
                storage.report_step(worker_id, report)
                steps += 1
            seconds = time.perf_counter() - started
    table = {
        sql: (count / steps, total / steps * 1e6)
        for sql, (count, total) in totals.items()
    }
    return seconds / steps * 1e6, table


def main():
    """Print the per-request and per-statement tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.getLogger("fuseline_broker").disabled = True

    runs = [request_costs(args.instances) for _ in range(args.repeats)]
    print(f"CPU µs per request, lowest of {args.repeats} runs", end=" ")
    print(f"of {args.instances} diamonds")
    for name in (*REQUEST_KINDS, "step", "baseline_request"):
        print(f"{min(run[name] for run in runs):9.1f}  {name}")
    best = min(runs, key=lambda run: run["step"])
    ratio = best["step"] / (3 * best["baseline_request"])
    print(f"{ratio:9.2f}  step / 3 baseline requests")

    wall, table = statement_costs(args.instances)
    in_sql = sum(micros for _, micros in table.values())
    print(f"\nstorage alone: {wall:.1f} µs per step, {in_sql:.1f} in SQL")
    print("µs/step  runs/step  statement")
    for sql, (runs_per_step, micros) in sorted(table.items(), key=lambda i: -i[1][1]):
        print(f"{micros:7.1f}  {runs_per_step:9.2f}  {' '.join(sql.split())[:100]}")


if __name__ == "__main__":
    main()
