"""Client processes of the benchmark, each on one persistent HTTP/1.1 connection.

Every process opens its connection, waits at a barrier with the others and
the parent, then sends its requests and puts one result dict on a queue.
The parent times a phase from the moment the barrier opens.
"""

import http.client
import json
import logging
import math
import multiprocessing
import queue
import threading
import time
import traceback
from dataclasses import dataclass, field
from urllib.parse import urlencode

from shapes import success_report

log = logging.getLogger(__name__)

#: How many error bodies each process keeps as examples for the output.
MAX_ERROR_SAMPLES = 3
#: How often a worker sends a report again after a 5xx reply.
REPORT_TRIES = 5
#: Seconds a worker sleeps after a 204 while instances are still running.
IDLE_WAIT = 0.02
#: Seconds the parent waits for every process to reach the barrier.
STARTUP_TIMEOUT = 120.0


@dataclass(frozen=True)
class Target:
    """Address of the server under test: loopback host, port and URL path prefix."""

    host: str
    port: int
    prefix: str = ""
    timeout: float = 60.0


@dataclass
class Stats:
    """Latencies in seconds per request kind, and counts of error replies.

    ``sent_at`` holds, per kind and in the same order as ``latencies``, the
    time.monotonic() at which each request was sent. That clock is shared by
    every process of the machine, so the times of several clients compare.
    """

    latencies: dict = field(default_factory=dict)
    sent_at: dict = field(default_factory=dict)
    status_5xx: int = 0
    status_other_non_2xx: int = 0
    database_locked_errors: int = 0
    reconnects: int = 0
    error_samples: list = field(default_factory=list)

    def record(self, kind, seconds, status, body, sent_at=None):
        """Add one reply."""
        self.latencies.setdefault(kind, []).append(seconds)
        self.sent_at.setdefault(kind, []).append(sent_at)
        failed = not 200 <= status < 300
        if status >= 500:
            self.status_5xx += 1
        elif failed:
            self.status_other_non_2xx += 1
        if b"database is locked" in body:
            self.database_locked_errors += 1
        if failed and len(self.error_samples) < MAX_ERROR_SAMPLES:
            self.error_samples.append(f"{kind} {status}: {body[:300]!r}")

    def as_dict(self):
        """Return the stats as plain data that pickles cheaply."""
        return {
            "latencies": self.latencies,
            "sent_at": self.sent_at,
            "status_5xx": self.status_5xx,
            "status_other_non_2xx": self.status_other_non_2xx,
            "database_locked_errors": self.database_locked_errors,
            "reconnects": self.reconnects,
            "error_samples": self.error_samples,
        }


@dataclass(frozen=True)
class Reply:
    """Status, headers and body of one HTTP reply."""

    status: int
    headers: http.client.HTTPMessage
    body: bytes


class TimedConnection:
    """One keep-alive HTTP/1.1 connection that times every request."""

    RETRIED_ERRORS = (
        http.client.RemoteDisconnected,
        ConnectionResetError,
        BrokenPipeError,
    )

    def __init__(self, target):
        self.target = target
        self.stats = Stats()
        self.conn = http.client.HTTPConnection(
            target.host, target.port, timeout=target.timeout
        )
        self.conn.connect()

    def request(self, kind, method, path, body=None, content_type=None):
        """Send one request, reconnecting once if the server closed an idle socket."""
        headers = {"Content-Type": content_type} if content_type else {}
        url = self.target.prefix + path
        for attempt in (1, 2):
            sent_at = time.monotonic()
            started = time.perf_counter()
            try:
                self.conn.request(method, url, body=body, headers=headers)
                response = self.conn.getresponse()
                data = response.read()
            except self.RETRIED_ERRORS:
                # gunicorn closes a connection idle for longer than its keepalive.
                self.conn.close()
                if attempt == 2:
                    raise
                self.stats.reconnects += 1
                continue
            self.stats.record(
                kind, time.perf_counter() - started, response.status, data, sent_at
            )
            return Reply(response.status, response.headers, data)
        raise AssertionError("unreachable")

    def post_json(self, kind, path, value):
        """POST a JSON body."""
        body = json.dumps(value, separators=(",", ":")).encode()
        return self.request(kind, "POST", path, body, "application/json")

    def close(self):
        """Close the connection."""
        self.conn.close()


# Processes


def _run_child(work, args, barrier, out):
    """Run ``work`` in a child process and put its result, or its error, on ``out``."""
    try:
        result = work(*args, barrier)
    except BaseException:  # noqa: BLE001 - every failure goes back to the parent
        barrier.abort()
        out.put({"error": traceback.format_exc()})
        return
    out.put(result)


def run_phase(name, work, args_list, timeout):
    """Run ``work(*args, barrier)`` in one process per args and return the phase.

    Returns ``(started, results)``: the monotonic time at which the barrier
    opened and the result dict of every process. Raises RuntimeError if a
    process failed or the phase took longer than ``timeout`` seconds.
    """
    # The fork server imports the benchmark's modules once and forks every
    # client from itself, so a phase starts in milliseconds, not seconds.
    context = multiprocessing.get_context("forkserver")
    barrier = context.Barrier(len(args_list) + 1)
    out = context.Queue()
    processes = [
        context.Process(target=_run_child, args=(work, args, barrier, out))
        for args in args_list
    ]
    try:
        for process in processes:
            process.start()
        try:
            barrier.wait(timeout=STARTUP_TIMEOUT)
        except threading.BrokenBarrierError:
            raise RuntimeError(f"{name}: {_first_error(out)}") from None
        started = time.monotonic()
        results = [_next_result(name, out, started + timeout) for _ in processes]
    finally:
        _end_processes(processes)
    log.info(
        "%s: %d processes done in %.1f s",
        name,
        len(processes),
        time.monotonic() - started,
    )
    return started, results


def _next_result(name, out, deadline):
    try:
        result = out.get(timeout=max(deadline - time.monotonic(), 0.1))
    except queue.Empty:
        raise RuntimeError(f"{name}: a process sent no result in time") from None
    if "error" in result:
        raise RuntimeError(f"{name}: a process failed:\n{result['error']}")
    return result


def _first_error(out):
    try:
        return out.get(timeout=5).get("error", "a process stopped early")
    except queue.Empty:
        return "the processes did not start in time"


def _end_processes(processes):
    for process in processes:
        process.join(timeout=10)
    for process in processes:
        if process.is_alive():
            process.terminate()
            process.join(timeout=5)


# Work of each kind of process


def dispatch_instances(target, body, count, barrier):
    """POST ``count`` dispatches of one pre-encoded request body."""
    connection = TimedConnection(target)
    barrier.wait()
    instance_ids = []
    for _ in range(count):
        reply = connection.request(
            "dispatch", "POST", "/workflow/dispatch", body, "application/json"
        )
        if reply.status == 200:
            instance_ids.append(json.loads(reply.body))
    finished_at = time.monotonic()
    connection.close()
    return {
        "stats": connection.stats.as_dict(),
        "instance_ids": instance_ids,
        "finished_at": finished_at,
    }


def run_protocol_worker(target, workflow, running_floor, deadline, barrier):
    """Loop keep-alive, take a step, report it, as a fuseline worker does.

    Stops after a 204 when at most ``running_floor`` instances are running
    (the runs that were running before the benchmark dispatched its own),
    or after ``deadline`` seconds.
    """
    connection = TimedConnection(target)
    reply = connection.post_json("register", "/worker/register", [workflow])
    if reply.status != 200:
        raise RuntimeError(f"worker registration failed: {reply.status} {reply.body!r}")
    worker_id = json.loads(reply.body)
    query = "?" + urlencode({"worker_id": worker_id})
    barrier.wait()

    end = time.monotonic() + deadline
    handouts, stale = [], 0
    last_report_at = None
    finished = False
    while time.monotonic() < end:
        connection.request(
            "keep_alive", "POST", "/worker/keep-alive" + query, b"", "application/json"
        )
        reply = connection.request("get_step", "GET", "/workflow/step" + query)
        if reply.status == 204:
            running = running_count(connection)
            if running is not None and running <= running_floor:
                finished = True
                break
            time.sleep(IDLE_WAIT)
            continue
        if reply.status != 200:
            time.sleep(IDLE_WAIT)
            continue
        assignment = json.loads(reply.body)
        handouts.append((assignment["instance_id"], assignment["step_name"]))
        outcome = _report(connection, query, workflow, assignment)
        if outcome is not None and not outcome.get("applied"):
            stale += 1
        last_report_at = time.monotonic()
    connection.close()
    return {
        "stats": connection.stats.as_dict(),
        "handouts": handouts,
        "stale_reports": stale,
        "last_report_at": last_report_at,
        "finished": finished,
    }


def _report(connection, query, workflow, assignment):
    """Report a step as SUCCEEDED, retrying after a 5xx, and return the reply body."""
    report = success_report(assignment, workflow)
    for _ in range(REPORT_TRIES):
        reply = connection.post_json("report", "/workflow/step" + query, report)
        if reply.status == 200:
            return json.loads(reply.body)
        if reply.status < 500:
            return None
        time.sleep(IDLE_WAIT)
    return None


def running_count(connection):
    """Return how many instances are running, or None on an error reply."""
    path = "/workflow/instances?state=RUNNING&page_size=1"
    reply = connection.request("running_count", "GET", path)
    total = reply.headers.get("X-Total-Count")
    if reply.status != 200 or total is None:
        return None
    return int(total)


def check_instances(target, instance_ids, barrier):
    """Count instances not SUCCEEDED and steps handed out other than once."""
    connection = TimedConnection(target)
    barrier.wait()
    not_succeeded = several = never = 0
    for instance_id in instance_ids:
        reply = connection.request(
            "get_instance", "GET", f"/workflow/instances/{instance_id}"
        )
        if reply.status != 200:
            not_succeeded += 1
            continue
        instance = json.loads(reply.body)
        if instance["state"] != "SUCCEEDED":
            not_succeeded += 1
        for step in instance["steps"].values():
            handed = len(step["assignments"])
            several += handed > 1
            never += handed == 0
    connection.close()
    return {
        "stats": connection.stats.as_dict(),
        "not_succeeded": not_succeeded,
        "steps_with_several_assignments": several,
        "steps_never_assigned": never,
    }


def send_baseline_cycles(target, requests, barrier):
    """Send the worker's three request forms in turn to the baseline app's route."""
    connection = TimedConnection(target)
    report = {"workflow_id": "w", "instance_id": "0" * 32, "step_name": "s"}
    body = json.dumps({**report, "state": "SUCCEEDED", "result": 3}).encode()
    barrier.wait()
    for number in range(requests):
        turn = number % 3
        if turn == 0:
            connection.request("keep_alive", "POST", "/", b"", "application/json")
        elif turn == 1:
            connection.request("get_step", "GET", "/")
        else:
            connection.request("report", "POST", "/", body, "application/json")
    finished_at = time.monotonic()
    connection.close()
    return {"stats": connection.stats.as_dict(), "finished_at": finished_at}


# Summaries


def split_evenly(total, parts):
    """Return ``parts`` counts that add up to ``total``, differing by at most one."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def merge_stats(results):
    """Merge the stats of several processes into one dict."""
    merged = Stats()
    for result in results:
        stats = result["stats"]
        for kind, values in stats["latencies"].items():
            merged.latencies.setdefault(kind, []).extend(values)
            merged.sent_at.setdefault(kind, []).extend(stats["sent_at"][kind])
        merged.status_5xx += stats["status_5xx"]
        merged.status_other_non_2xx += stats["status_other_non_2xx"]
        merged.database_locked_errors += stats["database_locked_errors"]
        merged.reconnects += stats["reconnects"]
        room = MAX_ERROR_SAMPLES - len(merged.error_samples)
        merged.error_samples.extend(stats["error_samples"][: max(room, 0)])
    return merged


def percentile(values, rank):
    """Return the nearest-rank percentile of a list of numbers."""
    ordered = sorted(values)
    index = max(math.ceil(rank / 100 * len(ordered)) - 1, 0)
    return ordered[index]


def latency_summary(stats, kinds):
    """Return count, p50 and p99 in ms of each request kind that was sent."""
    summary = {}
    for kind in kinds:
        values = stats.latencies.get(kind)
        if not values:
            continue
        summary[kind] = {
            "count": len(values),
            "p50_ms": round(percentile(values, 50) * 1000, 2),
            "p99_ms": round(percentile(values, 99) * 1000, 2),
        }
    return summary


def request_count(stats):
    """Return how many requests the stats cover."""
    return sum(len(values) for values in stats.latencies.values())
