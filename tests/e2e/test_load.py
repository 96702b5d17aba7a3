"""Sixty-four protocol workers against four gunicorn processes, with crashes."""

import http.client
import itertools
import json
import multiprocessing
import os
import signal
import sqlite3
import statistics
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from .harness import REPO_ROOT, ProtocolClient, wait_for
from .workers import diamond_result

pytestmark = pytest.mark.slow

#: Length of the main load run in seconds. The dispatchers stop after
#: DISPATCH_SHARE of it, and the workers drain what is left.
LOAD_SECONDS = float(os.environ.get("FUSELINE_LOAD_SECONDS", "60"))
#: Length of the shorter runs with a crash or with vanishing workers.
SHORT_LOAD_SECONDS = float(os.environ.get("FUSELINE_SHORT_LOAD_SECONDS", "20"))
DISPATCH_SHARE = 0.9
#: When, as a share of the run, the crash tests kill gunicorn.
KILL_SHARE = 0.4
#: How long after its planned end a run may take to drain before its workers
#: give up and the test fails.
DRAIN_LIMIT = 90.0

PROCESSES = 8
THREADS = 8
WORKERS = PROCESSES * THREADS
BROKER = {"workers": 4, "threads": 8}
#: The dispatchers keep about this many instances running, so the queue
#: stays full without growing past what the workers drain in a few seconds.
BACKLOG = 2 * WORKERS
DISPATCHERS = 4
DISPATCH_BATCH = 16
IDLE_WAIT = 0.2
RETRY_WAIT = 0.2
#: Server errors in a row after which a worker stops retrying a request.
MAX_SERVER_ERRORS = 5
REQUEST_TIMEOUT = 60.0
#: How long test_handout_time_after_lock_wait holds SQLite's write lock. It
#: must stay below the broker's default busy timeout of 5 s.
LOCK_HOLD = 1.0

# A short deadline brings back a step whose handout reply was lost. A slow
# machine may also let a live worker's step expire, so MAX_ATTEMPTS is high
# enough that no step fails for being slow.
SHORT_DEADLINE = {
    "FUSELINE_BROKER_STEP_TIMEOUT": "3",
    "FUSELINE_BROKER_MAX_ATTEMPTS": "20",
}
VANISH_DEADLINE = {**SHORT_DEADLINE, "FUSELINE_BROKER_STEP_TIMEOUT": "2"}
ALREADY_APPLIED = "already applied"
HANDED_TO_ANOTHER = "handed to another worker"
DIAMOND_STEPS = ("step0", "step1", "step2", "step3")


def load_diamond():
    return json.loads((REPO_ROOT / "examples" / "diamond.json").read_text())


class ProtocolFailure(Exception):
    """A reply that a fuseline worker would stop on (a 4xx, or repeated 5xx)."""


def send(url, method, body):
    """Send one request as fuseline's urllib client does.

    Returns ``(status, headers, body bytes)`` for every HTTP reply, errors
    included. Raises OSError or HTTPException when the connection fails.
    """
    headers = {}
    data = None
    if body is not None:
        headers["Content-type"] = "application/json"
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as reply:
            return reply.status, reply.headers, reply.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers, exc.read()


class MeteredClient:
    """Send protocol requests and record the status and latency of each one.

    A 5xx reply is recorded and the request sent again, because the broker
    rolls back the transaction of a failed request. With ``retry_connection``
    a refused or broken connection is recorded and retried as well.
    """

    def __init__(self, base_url, deadline, retry_connection):
        self.base_url = base_url
        self.deadline = deadline
        self.retry_connection = retry_connection
        self.statuses = Counter()
        self.latencies = []
        self.server_errors = []
        self.locked = []
        # (error repr, monotonic time sent, monotonic time failed)
        self.connection_errors = []

    def call(self, method, path, body=None):
        """Return ``(status, headers, parsed body or None)`` of a 2xx reply."""
        server_errors = 0
        while True:
            sent_at = time.monotonic()
            try:
                status, headers, payload = send(self.base_url + path, method, body)
            except (OSError, http.client.HTTPException) as exc:
                failed_at = time.monotonic()
                self.connection_errors.append((repr(exc), sent_at, failed_at))
                if not self.retry_connection or failed_at > self.deadline:
                    raise
                time.sleep(RETRY_WAIT)
                continue
            self.latencies.append(time.monotonic() - sent_at)
            self.statuses[status] += 1
            text = payload.decode(errors="replace")
            if "database is locked" in text:
                self.locked.append((method, path, status, text))
            if status >= 500:
                self.server_errors.append((method, path, status, text))
                server_errors += 1
                if server_errors >= MAX_SERVER_ERRORS or sent_at > self.deadline:
                    raise ProtocolFailure(f"{method} {path}: HTTP {status}: {text}")
                time.sleep(RETRY_WAIT)
                continue
            if status >= 400:
                raise ProtocolFailure(f"{method} {path}: HTTP {status}: {text}")
            return status, headers, (json.loads(payload) if payload else None)

    def count_running(self):
        _, headers, _ = self.call(
            "GET", "/workflow/instances?state=RUNNING&page_size=1"
        )
        return int(headers["X-Total-Count"])

    def summary(self):
        return {
            "statuses": self.statuses,
            "latencies": self.latencies,
            "server_errors": self.server_errors,
            "locked": self.locked,
            "connection_errors": self.connection_errors,
        }


class LoadWorker:
    """One protocol worker: keep-alive, take a step, compute it, report it.

    It stops once dispatching is done and no instance is running. A
    vanishing worker takes one step, then sends nothing until ``wake`` is
    set, and then reports that step late.
    """

    def __init__(self, client, workflow, dispatch_done, wake, vanishing):
        self.client = client
        self.workflow = workflow
        self.dispatch_done = dispatch_done
        self.wake = wake
        self.vanishing = vanishing
        self.worker_id = None
        self.handouts = []
        # (instance_id, step_name, result, worker_id, monotonic time of reply)
        self.applied = []
        self.stale = []
        self.late = []
        self.failure = None

    def run(self):
        try:
            self._loop()
        except Exception as exc:  # noqa: BLE001 - reported to the test process
            self.failure = repr(exc)

    def _loop(self):
        client = self.client
        self.worker_id = client.call("POST", "/worker/register", [self.workflow])[2]
        query = f"?worker_id={self.worker_id}"
        while time.monotonic() < client.deadline:
            client.call("POST", "/worker/keep-alive" + query, b"")
            status, _, assignment = client.call("GET", "/workflow/step" + query)
            if status == 204:
                if self.dispatch_done.is_set() and client.count_running() == 0:
                    return
                time.sleep(IDLE_WAIT)
                continue
            key = (assignment["instance_id"], assignment["step_name"])
            self.handouts.append(
                (
                    *key,
                    self.worker_id,
                    assignment["assigned_at"],
                    assignment["expires_at"],
                    time.time(),
                )
            )
            result = diamond_result(assignment)
            report = {
                "workflow_id": assignment["workflow_id"],
                "instance_id": key[0],
                "step_name": key[1],
                "state": "SUCCEEDED",
                "result": result,
            }
            if self.vanishing:
                self.wake.wait(timeout=max(client.deadline - time.monotonic(), 0))
                reply = client.call("POST", "/workflow/step" + query, report)[2]
                self.late.append((*key, reply))
                return
            reply = client.call("POST", "/workflow/step" + query, report)[2]
            if reply["applied"]:
                self.applied.append((*key, result, self.worker_id, time.monotonic()))
            else:
                self.stale.append((*key, reply["reason"]))
        raise TimeoutError(f"worker {self.worker_id} still busy at its deadline")

    def summary(self):
        return {
            **self.client.summary(),
            "worker_id": self.worker_id,
            "vanishing": self.vanishing,
            "handouts": self.handouts,
            "applied": self.applied,
            "stale": self.stale,
            "late": self.late,
            "failure": self.failure,
        }


def run_worker_process(base_url, workflow, roles, options, out):
    """Run one LoadWorker thread per role and put their summaries in ``out``."""
    workers = [
        LoadWorker(
            MeteredClient(base_url, options["deadline"], options["retry_connection"]),
            workflow,
            options["dispatch_done"],
            options["wake"],
            vanishing,
        )
        for vanishing in roles
    ]
    threads = [threading.Thread(target=worker.run) for worker in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    out.put([worker.summary() for worker in workers])


class LoadRun:
    """WORKERS protocol workers in forked processes, and DISPATCHERS threads.

    The dispatcher threads keep about BACKLOG diamond instances running for
    the first DISPATCH_SHARE of ``seconds``, then set ``dispatch_done``.
    """

    def __init__(self, base_url, seconds, *, retry_connection=False, vanish=False):
        self.base_url = base_url
        self.started = time.monotonic()
        self.dispatch_until = self.started + seconds * DISPATCH_SHARE
        self.deadline = self.started + seconds + DRAIN_LIMIT
        self.workflow = load_diamond()
        self.context = multiprocessing.get_context("fork")
        self.dispatch_done = self.context.Event()
        self.wake = self.context.Event()
        self.stopping = threading.Event()
        self.out = self.context.Queue()
        self.retry_connection = retry_connection
        # Every tenth worker vanishes after taking one step.
        self.roles = [vanish and index % 10 == 9 for index in range(WORKERS)]
        self.processes = []
        self.dispatcher = None
        self.finished = None
        self.dispatch_clients = [
            MeteredClient(base_url, self.deadline, retry_connection)
            for _ in range(DISPATCHERS)
        ]
        self.numbers = itertools.count()
        self.dispatched = {}
        self.dispatch_failures = []

    def start(self):
        options = {
            "deadline": self.deadline,
            "retry_connection": self.retry_connection,
            "dispatch_done": self.dispatch_done,
            "wake": self.wake,
        }
        # Fork before starting any thread, so no child inherits one.
        for number in range(PROCESSES):
            roles = self.roles[number * THREADS : (number + 1) * THREADS]
            process = self.context.Process(
                target=run_worker_process,
                args=(self.base_url, self.workflow, roles, options, self.out),
            )
            process.start()
            self.processes.append(process)
        self.dispatcher = threading.Thread(target=self._dispatch_all, daemon=True)
        self.dispatcher.start()
        return self

    def _dispatch_all(self):
        threads = [
            threading.Thread(target=self._dispatch, args=(client,), daemon=True)
            for client in self.dispatch_clients
        ]
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        finally:
            self.dispatch_done.set()

    def _dispatch(self, client):
        try:
            while time.monotonic() < self.dispatch_until:
                if self.stopping.is_set():
                    return
                # Several threads read the same count, so the backlog may
                # overshoot by up to DISPATCHERS * DISPATCH_BATCH instances.
                missing = BACKLOG - client.count_running()
                for _ in range(min(missing, DISPATCH_BATCH)):
                    inputs = {"a": next(self.numbers), "b": 7}
                    body = {"workflow": self.workflow, "inputs": inputs}
                    instance_id = client.call("POST", "/workflow/dispatch", body)[2]
                    self.dispatched[instance_id] = inputs
                time.sleep(0.05)
        except Exception as exc:  # noqa: BLE001 - checked by the test
            self.dispatch_failures.append(repr(exc))

    def wait_dispatched(self):
        self.dispatcher.join(timeout=self.deadline - time.monotonic())
        assert not self.dispatcher.is_alive()

    def collect(self):
        """Wait for every worker, and return their summaries and the dispatchers'."""
        summaries = []
        for _ in self.processes:
            timeout = max(self.deadline - time.monotonic(), 0) + 30
            summaries.extend(self.out.get(timeout=timeout))
        for process in self.processes:
            process.join(timeout=30)
        self.finished = time.monotonic()
        return summaries + [client.summary() for client in self.dispatch_clients]

    def stop(self):
        """Kill whatever is still running, after a failed test."""
        self.stopping.set()
        self.dispatch_done.set()
        self.wake.set()
        for process in self.processes:
            if process.is_alive():
                process.kill()
            process.join(timeout=10)


@pytest.fixture
def start_load(start_broker):
    """Start LoadRuns on demand, and kill their processes after the test."""
    runs = []

    def start(base_url, seconds, **kwargs):
        run = LoadRun(base_url, seconds, **kwargs)
        runs.append(run)
        return run.start()

    yield start
    for run in runs:
        run.stop()


def merged(summaries, field):
    return [item for summary in summaries for item in summary.get(field, ())]


def fetch_instances(base_url):
    """Return every stored instance by id, with its steps and assignments."""
    client = ProtocolClient(base_url)
    page_size = 500
    instance_ids = []
    page = 1
    while True:
        path = f"/workflow/instances?page={page}&page_size={page_size}"
        items = client.call("GET", path)[1]
        instance_ids.extend(item["instance_id"] for item in items)
        if len(items) < page_size:
            break
        page += 1
    with ThreadPoolExecutor(max_workers=8) as pool:
        instances = list(pool.map(client.get_instance, instance_ids))
    return dict(zip(instance_ids, instances, strict=True))


def expected_results(inputs):
    step0 = inputs["a"] + inputs["b"]
    return {"step0": step0, "step1": 2 * step0, "step2": 3 * step0, "step3": 5 * step0}


def wrong_results(instances):
    """Return ``(instance, step, stored, expected)`` for each wrong result."""
    wrong = []
    for instance_id, instance in instances.items():
        expected = expected_results(instance["inputs"])
        for name, step in instance["steps"].items():
            if step["state"] != "SUCCEEDED" or step["result"] != expected[name]:
                wrong.append((instance_id, name, step["state"], step["result"]))
    return wrong


def early_handouts(instances, summaries):
    """Return the handouts that reached a worker before the previous one expired.

    The broker may hand a step out again only after the deadline of its
    previous assignment, and never after the step was reported. The time a
    worker received the reply is a bound for when the handout happened
    that does not rely on the broker's own clock.
    """
    received = {
        (worker_id, instance_id, name, assigned_at): received_at
        for instance_id, name, worker_id, assigned_at, _, received_at in merged(
            summaries, "handouts"
        )
    }
    early = []
    for instance_id, instance in instances.items():
        for name, step in instance["steps"].items():
            for earlier, later in itertools.pairwise(step["assignments"]):
                key = (later["worker_id"], instance_id, name, later["assigned_at"])
                received_at = received.get(key)
                if received_at is not None and received_at <= earlier["expires_at"]:
                    early.append((*key, received_at, earlier["expires_at"]))
    return early


def overlapping_assignments(instances):
    """Return stored assignments of a step that began before the previous expired."""
    overlaps = []
    for instance_id, instance in instances.items():
        for name, step in instance["steps"].items():
            for earlier, later in itertools.pairwise(step["assignments"]):
                if later["assigned_at"] < earlier["expires_at"]:
                    overlaps.append((instance_id, name, earlier, later))
    return overlaps


def unrecorded_handouts(instances, summaries):
    """Return the handouts workers received that the broker has no record of."""
    stored = {
        (item["worker_id"], instance_id, name, item["assigned_at"])
        for instance_id, instance in instances.items()
        for name, step in instance["steps"].items()
        for item in step["assignments"]
    }
    return [
        handout
        for handout in merged(summaries, "handouts")
        if (handout[2], handout[0], handout[1], handout[3]) not in stored
    ]


def all_steps(instances):
    return {(instance_id, name) for instance_id in instances for name in DIAMOND_STEPS}


def not_stored_as_applied(instances, applied):
    """Return the applied reports whose result or worker the broker lost."""
    lost = []
    for instance_id, name, result, worker_id, _ in applied:
        step = instances[instance_id]["steps"][name]
        stored = (step["state"], step["result"], step["worker_id"])
        if stored != ("SUCCEEDED", result, worker_id):
            lost.append((instance_id, name, result, worker_id, stored))
    return lost


def wrong_inputs(instances, dispatched):
    return [
        (instance_id, inputs, instances.get(instance_id, {}).get("inputs"))
        for instance_id, inputs in dispatched.items()
        if instance_id not in instances or instances[instance_id]["inputs"] != inputs
    ]


def stale_reasons(summaries):
    """Count the reasons of reports not applied, by their kind."""
    kinds = Counter()
    for *_, reason in merged(summaries, "stale"):
        if ALREADY_APPLIED in reason:
            kinds[ALREADY_APPLIED] += 1
        elif HANDED_TO_ANOTHER in reason:
            kinds[HANDED_TO_ANOTHER] += 1
        else:
            kinds[reason] += 1
    return kinds


def print_measurements(label, run, summaries, instances):
    """Print request counts and latencies; ``pytest -s`` shows them."""
    statuses = sum((Counter(s["statuses"]) for s in summaries), Counter())
    latencies = sorted(merged(summaries, "latencies"))
    requests = sum(statuses.values())
    elapsed = run.finished - run.started
    p99 = statistics.quantiles(latencies, n=100)[98] if len(latencies) > 1 else 0
    print(
        f"\n{label}: {len(instances)} instances, {requests} requests in "
        f"{elapsed:.1f} s ({requests / elapsed:.0f}/s), statuses "
        f"{dict(sorted(statuses.items()))}, latency median "
        f"{statistics.median(latencies) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
        f"max {latencies[-1] * 1000:.1f} ms, connection errors "
        f"{len(merged(summaries, 'connection_errors'))}, stale reports "
        f"{dict(stale_reasons(summaries))}"
    )


def check_run_finished(run, summaries):
    """Assert that every dispatcher and worker ended without a failure."""
    assert run.dispatch_failures == []
    assert [s["failure"] for s in summaries if s.get("failure")] == []
    assert merged(summaries, "server_errors") == []
    assert merged(summaries, "locked") == []


def check_instances(instances, run, summaries):
    """Assert that every instance succeeded with the diamond's results."""
    assert len(run.dispatched) >= BACKLOG
    assert wrong_inputs(instances, run.dispatched) == []
    states = Counter(instance["state"] for instance in instances.values())
    assert states == Counter(SUCCEEDED=len(instances))
    assert wrong_results(instances) == []
    assert unrecorded_handouts(instances, summaries) == []
    assert early_handouts(instances, summaries) == []
    assert overlapping_assignments(instances) == []


def check_applied_once(instances, summaries, applied):
    """Assert that each step was applied once, by the report stored for it.

    A report whose reply was lost in a crash was applied already. Its retry
    then returns ``applied: false`` with "already applied", so the step
    appears in exactly one of the two lists.
    """
    counts = Counter((instance_id, name) for instance_id, name, *_ in applied)
    assert set(counts.values()) == {1}
    retried = {
        (instance_id, name)
        for instance_id, name, reason in merged(summaries, "stale")
        if ALREADY_APPLIED in reason
    }
    assert retried & set(counts) == set()
    assert set(counts) | retried == all_steps(instances)
    assert not_stored_as_applied(instances, applied) == []


def check_nothing_applied_lost(instances, summaries, kill_started):
    """Assert that the reports applied before a kill are stored, each once."""
    applied = merged(summaries, "applied")
    before_kill = [item for item in applied if item[-1] < kill_started]
    assert len(before_kill) > 0
    assert not_stored_as_applied(instances, before_kill) == []
    check_applied_once(instances, summaries, applied)
    assert set(stale_reasons(summaries)) <= {ALREADY_APPLIED, HANDED_TO_ANOTHER}


def check_connection_errors(summaries, first_failure, last_send):
    """Assert that requests failed only because of the kill.

    Each failed request must have failed after the kill began, and must
    have been sent before ``last_send``, the time the broker was whole again.
    """
    errors = merged(summaries, "connection_errors")
    assert [e for e in errors if e[2] < first_failure] == []
    assert [e for e in errors if e[1] > last_send] == []


def count_running(base_url):
    return MeteredClient(base_url, time.monotonic(), False).count_running()


def replaced_worker_pids(server, victim):
    pids = server.worker_pids()
    if len(pids) == BROKER["workers"] and victim not in pids:
        return pids
    return None


def test_load_many_workers(start_broker, start_load):
    server = start_broker(**BROKER)
    run = start_load(server.url, LOAD_SECONDS)
    run.wait_dispatched()
    summaries = run.collect()
    instances = fetch_instances(server.url)
    print_measurements("load", run, summaries, instances)

    check_run_finished(run, summaries)
    assert merged(summaries, "connection_errors") == []
    check_instances(instances, run, summaries)
    assert set(run.dispatched) == set(instances)
    # With the default deadline of 300 s no step is ever handed out twice.
    assignments = Counter(
        len(step["assignments"])
        for instance in instances.values()
        for step in instance["steps"].values()
    )
    assert assignments == Counter({1: len(instances) * len(DIAMOND_STEPS)})
    received = Counter((i, name) for i, name, *_ in merged(summaries, "handouts"))
    assert set(received.values()) == {1}
    assert merged(summaries, "stale") == []
    applied = merged(summaries, "applied")
    check_applied_once(instances, summaries, applied)
    # Every worker took part, so the handouts really interleaved.
    idle = [s["worker_id"] for s in summaries[:WORKERS] if not s["handouts"]]
    assert idle == []
    assert "Traceback" not in server.log()


def test_load_worker_process_killed(start_broker, start_load):
    server = start_broker(**BROKER, env=SHORT_DEADLINE)
    run = start_load(server.url, SHORT_LOAD_SECONDS, retry_connection=True)
    time.sleep(SHORT_LOAD_SECONDS * KILL_SHARE)
    pids = server.worker_pids()
    assert len(pids) == BROKER["workers"]
    kill_started = time.monotonic()
    os.kill(pids[0], signal.SIGKILL)
    replaced = wait_for(lambda: replaced_worker_pids(server, pids[0]), timeout=60)
    # The killed process is gone by now, so no request sent later can fail.
    replaced_at = time.monotonic()
    run.wait_dispatched()
    summaries = run.collect()
    instances = fetch_instances(server.url)
    print_measurements("one worker process killed", run, summaries, instances)

    assert len(set(replaced) - set(pids)) == 1
    check_run_finished(run, summaries)
    check_connection_errors(summaries, kill_started, replaced_at)
    check_instances(instances, run, summaries)
    assert set(run.dispatched) == set(instances)
    check_nothing_applied_lost(instances, summaries, kill_started)


def test_load_server_killed(start_broker, start_load):
    server = start_broker(**BROKER, env=SHORT_DEADLINE)
    run = start_load(server.url, SHORT_LOAD_SECONDS, retry_connection=True)
    time.sleep(SHORT_LOAD_SECONDS * KILL_SHARE)
    running_at_kill = count_running(server.url)
    kill_started = time.monotonic()
    server.kill()
    time.sleep(0.5)
    restarted = start_broker(
        server.database, **BROKER, env=SHORT_DEADLINE, port=server.port
    )
    ready = time.monotonic()
    run.wait_dispatched()
    summaries = run.collect()
    instances = fetch_instances(restarted.url)
    print_measurements("whole server killed", run, summaries, instances)

    assert running_at_kill > 0
    check_run_finished(run, summaries)
    check_connection_errors(summaries, kill_started, ready)
    # A dispatch whose reply died with the server was sent again, so the
    # broker may hold more instances than the dispatchers know of.
    check_instances(instances, run, summaries)
    assert set(run.dispatched) <= set(instances)
    check_nothing_applied_lost(instances, summaries, kill_started)


def test_load_vanished_workers(start_broker, start_load):
    server = start_broker(**BROKER, env=VANISH_DEADLINE)
    run = start_load(server.url, SHORT_LOAD_SECONDS, vanish=True)
    run.wait_dispatched()
    wait_for(
        lambda: count_running(server.url) == 0,
        timeout=run.deadline - time.monotonic(),
        interval=0.5,
    )
    before = fetch_instances(server.url)
    run.wake.set()
    summaries = run.collect()
    after = fetch_instances(server.url)
    print_measurements("vanished workers", run, summaries, after)

    check_run_finished(run, summaries)
    assert merged(summaries, "connection_errors") == []
    check_instances(after, run, summaries)
    assert set(run.dispatched) == set(after)
    vanished = [s for s in summaries if s.get("vanishing")]
    assert len(vanished) == WORKERS // 10
    assert [len(s["handouts"]) for s in vanished] == [1] * len(vanished)
    late = merged(vanished, "late")
    assert len(late) == len(vanished)
    assert [reply["applied"] for *_, reply in late] == [False] * len(late)
    assert [r for *_, r in late if HANDED_TO_ANOTHER not in r["reason"]] == []
    assert after == before
    for summary in vanished:
        instance_id, name, *_ = summary["handouts"][0]
        step = after[instance_id]["steps"][name]
        assert step["assignments"][0]["worker_id"] == summary["worker_id"]
        assert step["worker_id"] != summary["worker_id"]
    applied = merged(summaries, "applied")
    check_applied_once(after, summaries, applied)
    assert set(stale_reasons(summaries)) <= {HANDED_TO_ANOTHER}


def test_handout_time_after_lock_wait(start_broker):
    server = start_broker()
    client = ProtocolClient(server.url)
    workflow = load_diamond()
    client.dispatch(workflow, {"a": 1, "b": 2})
    worker_id = client.register_worker([workflow])
    replies = []
    holder = sqlite3.connect(server.database, isolation_level=None)
    try:
        holder.execute("begin immediate")
        request = threading.Thread(
            target=lambda: replies.append(client.get_step(worker_id))
        )
        request.start()
        time.sleep(LOCK_HOLD)
        released_at = time.time()
        holder.execute("commit")
    finally:
        holder.close()
    request.join(timeout=30)

    status, assignment = replies[0]
    assert status == 200
    assert assignment["assigned_at"] >= released_at
