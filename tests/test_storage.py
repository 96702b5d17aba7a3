"""RuntimeStorage contract tests, run with an injected clock instead of sleeps."""

import threading

import pytest

from fuseline_broker.errors import DefinitionConflict, NotAssigned, NotFound
from fuseline_broker.retention import COMMAND_BATCH, COMMAND_PAUSE
from fuseline_broker.storage.base import Settings
from fuseline_broker.storage.sqlite import SQLiteStorage

from .conftest import load_workflow

STEP_TIMEOUT = 100.0
WORKER_TTL = 30.0


class FakeClock:
    """A clock that moves only when a test advances it."""

    def __init__(self, now=1_000_000.0):
        self.now = now

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture(params=["sqlite"])
def storage(request, tmp_path, clock):
    """Every RuntimeStorage implementation, each on fresh state."""
    settings = Settings(
        worker_ttl=WORKER_TTL, step_timeout=STEP_TIMEOUT, step_grace=30, max_attempts=3
    )
    store = SQLiteStorage(tmp_path / "broker.db", settings, clock=clock)
    store.initialize()
    yield store
    store.close()


def report(assignment, state="SUCCEEDED", result=None):
    return {
        "workflow_id": assignment.workflow_id,
        "instance_id": assignment.instance_id,
        "step_name": assignment.step_name,
        "state": state,
        "result": result,
    }


@pytest.fixture
def chain(storage):
    workflow = load_workflow("chain_five")
    instance_id = storage.dispatch(workflow, {})
    return workflow, instance_id


def test_deadline_is_assigned_at_plus_budget(storage, chain, clock):
    worker = storage.register_worker([chain[0]])
    assignment = storage.take_step(worker)
    assert assignment.assigned_at == clock.now
    assert assignment.expires_at == clock.now + STEP_TIMEOUT


def test_step_at_deadline_not_expired(storage, chain, clock):
    first = storage.register_worker([chain[0]])
    second = storage.register_worker([chain[0]])
    storage.take_step(first)
    clock.advance(STEP_TIMEOUT)
    assert storage.take_step(second) is None


def test_report_after_deadline_before_handout_applied(storage, chain, clock):
    first = storage.register_worker([chain[0]])
    other = storage.register_worker([load_workflow("diamond_and_join")])
    assignment = storage.take_step(first)
    clock.advance(STEP_TIMEOUT + 1)
    # A poll by a worker of another workflow queues the step again.
    assert storage.take_step(other) is None
    assert storage.get_instance(chain[1])["steps"]["step0"]["state"] == "QUEUED"

    outcome = storage.report_step(first, report(assignment, result="late"))

    assert outcome.applied
    steps = storage.get_instance(chain[1])["steps"]
    assert steps["step0"]["result"] == "late"
    assert steps["step1"]["state"] == "QUEUED"


def test_report_after_handout_to_other_ignored(storage, chain, clock):
    first = storage.register_worker([chain[0]])
    second = storage.register_worker([chain[0]])
    assignment = storage.take_step(first)
    clock.advance(STEP_TIMEOUT + 1)
    retaken = storage.take_step(second)
    assert retaken.step_name == "step0"
    before = storage.get_instance(chain[1])

    outcome = storage.report_step(first, report(assignment, result="late"))

    assert not outcome.applied
    assert "another worker" in outcome.reason
    assert storage.get_instance(chain[1]) == before
    assert storage.report_step(second, report(retaken, result="ok")).applied


def test_attempts_exhausted_fail_and_cancel(storage, chain, clock):
    worker = storage.register_worker([chain[0]])
    for attempt in range(1, 4):
        assignment = storage.take_step(worker)
        assert assignment.step_name == "step0"
        assert storage.get_instance(chain[1])["steps"]["step0"]["attempts"] == attempt
        clock.advance(STEP_TIMEOUT + 1)

    assert storage.take_step(worker) is None
    instance = storage.get_instance(chain[1])
    assert instance["state"] == "FAILED"
    assert instance["steps"]["step0"]["result"]["attempts"] == 3
    assert {instance["steps"][f"step{i}"]["state"] for i in range(1, 5)} == {
        "CANCELLED"
    }


def test_oldest_queued_step_first(storage, clock):
    workflow = load_workflow("chain_five")
    older = storage.dispatch(workflow, {})
    clock.advance(1)
    newer = storage.dispatch(workflow, {})
    worker = storage.register_worker([workflow])
    assert storage.take_step(worker).instance_id == older
    assert storage.take_step(worker).instance_id == newer


def test_worker_gets_only_registered_workflows(storage):
    storage.dispatch(load_workflow("chain_five"), {})
    worker = storage.register_worker([load_workflow("diamond_and_join")])
    assert storage.take_step(worker) is None


def test_conflicting_definition_stores_nothing(storage):
    workflow = load_workflow("chain_five")
    storage.register_worker([workflow])
    changed = load_workflow("chain_five")
    changed["outputs"] = ["step3"]
    with pytest.raises(DefinitionConflict, match="outputs"):
        storage.register_worker([load_workflow("or_join"), changed])
    assert storage.list_workers(live_only=False).__len__() == 1
    with pytest.raises(NotFound):
        storage.touch_worker("never-registered")


def test_stranger_report_raises(storage, chain):
    holder = storage.register_worker([chain[0]])
    stranger = storage.register_worker([chain[0]])
    assignment = storage.take_step(holder)
    with pytest.raises(NotAssigned):
        storage.report_step(stranger, report(assignment))


def test_liveness_follows_ttl(storage, clock):
    worker = storage.register_worker([load_workflow("chain_five")])
    clock.advance(31)
    assert storage.list_workers() == []
    storage.touch_worker(worker)
    assert [w["worker_id"] for w in storage.list_workers()] == [worker]


def test_threads_never_share_a_step(storage):
    workflow = load_workflow("diamond_and_join")
    for _ in range(30):
        storage.dispatch(workflow, {"a": 1, "b": 1})
    workers = [storage.register_worker([workflow]) for _ in range(6)]
    taken = []
    lock = threading.Lock()

    def take_all(worker):
        while True:
            assignment = storage.take_step(worker)
            if assignment is None:
                return
            with lock:
                taken.append((assignment.instance_id, assignment.step_name))

    threads = [threading.Thread(target=take_all, args=(w,)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(taken) == 30
    assert len(set(taken)) == 30


def test_one_log_line_per_event(storage, chain, clock, caplog):
    caplog.set_level("DEBUG", logger="fuseline_broker")
    worker = storage.register_worker([chain[0]])
    assignment = storage.take_step(worker)
    storage.report_step(worker, report(assignment))
    storage.report_step(worker, report(assignment))
    second = storage.take_step(worker)
    clock.advance(STEP_TIMEOUT + 1)
    storage.take_step(worker)

    lines = [record.getMessage() for record in caplog.records]
    ids = f"instance={chain[1]}"
    assert [line.split(" ")[0] for line in lines] == [
        "registered",
        "handout",
        "report",
        "stale",
        "handout",
        "expired,",
        "handout",
    ]
    assert all(ids in line for line in lines[1:])
    assert all(f"worker={worker}" in line for line in lines)
    assert f"step={second.step_name}" in lines[5]
    assert all("workflow=chain" in line for line in lines[1:])
    # First handouts and successful reports are DEBUG, the rest INFO or WARNING.
    levels = [record.levelname for record in caplog.records]
    assert levels == ["INFO", "DEBUG", "DEBUG", "WARNING", "DEBUG", "WARNING", "INFO"]


def test_failed_report_logged_at_info(storage, chain, caplog):
    caplog.set_level("INFO", logger="fuseline_broker")
    worker = storage.register_worker([chain[0]])
    assignment = storage.take_step(worker)
    storage.report_step(worker, report(assignment, state="FAILED"))

    lines = [
        r.getMessage() for r in caplog.records if r.getMessage().startswith("report")
    ]
    assert len(lines) == 1
    assert "state=FAILED" in lines[0]


def finish_run(storage, workflow):
    instance_id = storage.dispatch(workflow, {})
    worker = storage.register_worker([workflow])
    while (assignment := storage.take_step(worker)) is not None:
        storage.report_step(worker, report(assignment))
    return instance_id


def test_purge_keeps_running_and_recent(storage, clock):
    workflow = load_workflow("chain_five")
    old = finish_run(storage, workflow)
    clock.advance(100)
    recent = finish_run(storage, workflow)
    running = storage.dispatch(workflow, {})

    assert storage.purge_finished(clock.now - 50, limit=10) == 1

    with pytest.raises(NotFound):
        storage.get_instance(old)
    assert storage.get_instance(recent)["state"] == "SUCCEEDED"
    assert storage.get_instance(running)["state"] == "RUNNING"
    assert storage.purge_finished(clock.now + 1, limit=10) == 1
    assert storage.get_instance(running)["state"] == "RUNNING"


def test_purge_respects_limit(storage, clock):
    workflow = load_workflow("conditional_skip")
    for _ in range(5):
        finish_run(storage, workflow)
    clock.advance(10)
    assert storage.purge_finished(clock.now, limit=2) == 2
    assert storage.list_instances(None, None, 0, 10).total == 3


def test_lazy_purge_paced(storage, clock):
    from fuseline_broker.retention import LAZY_INTERVAL, Retention

    workflow = load_workflow("conditional_skip")
    for _ in range(3):
        finish_run(storage, workflow)
    clock.advance(1000)
    retention = Retention(max_age=500, lazy_batch=2, clock=clock)

    assert retention.purge_some(storage) == 2
    # The workers that ran the runs are purged too, in batches of the same size.
    assert len(storage.list_workers(live_only=False)) == 1
    assert retention.purge_some(storage) == 0
    clock.advance(LAZY_INTERVAL)
    assert retention.purge_some(storage) == 1
    assert storage.list_instances(None, None, 0, 10).total == 0
    assert storage.list_workers(live_only=False) == []


def test_purge_workers_spares_live_ones(storage, clock):
    workflow = load_workflow("chain_five")
    stopped = storage.register_worker([workflow])
    clock.advance(1000)
    live = storage.register_worker([workflow])
    clock.advance(WORKER_TTL / 2)

    # Even a cutoff in the future leaves the worker seen within the TTL.
    assert storage.purge_workers(clock.now + 1, limit=10) == 1

    assert [w["worker_id"] for w in storage.list_workers(live_only=False)] == [live]
    with pytest.raises(NotFound):
        storage.touch_worker(stopped)
    with pytest.raises(NotFound):
        storage.take_step(stopped)
    storage.dispatch(workflow, {})
    assert storage.take_step(live) is not None


def test_purge_workers_keeps_recent_and_respects_limit(storage, clock):
    workflow = load_workflow("chain_five")
    for _ in range(3):
        storage.register_worker([workflow])
    clock.advance(1000)
    recent = storage.register_worker([workflow])
    # Not live any more, but seen after the cutoff.
    clock.advance(100)

    assert storage.purge_workers(clock.now - 500, limit=2) == 2
    assert storage.purge_workers(clock.now - 500, limit=2) == 1
    assert storage.purge_workers(clock.now - 500, limit=2) == 0
    assert [w["worker_id"] for w in storage.list_workers(live_only=False)] == [recent]


class SlowPurges:
    """A storage whose purge transactions take a known time on a fake clock."""

    def __init__(self, batches, seconds, clock):
        self.batches = list(batches)
        self.seconds = seconds
        self.clock = clock

    def purge_finished(self, finished_before, limit):
        self.clock.advance(self.seconds)
        return min(self.batches.pop(0), limit)

    def purge_workers(self, seen_before, limit):
        return 0


@pytest.mark.parametrize(
    ("share", "pause"), [(0.1, 0.9), (0.5, 0.1), (1.0, COMMAND_PAUSE)]
)
def test_purge_command_paced_to_its_share(monkeypatch, clock, share, pause):
    from fuseline_broker import retention

    pauses = []
    monkeypatch.setattr(retention.time, "monotonic", clock)
    monkeypatch.setattr(retention.time, "sleep", pauses.append)
    storage = SlowPurges([COMMAND_BATCH, COMMAND_BATCH, 3], 0.1, clock)
    policy = retention.Retention(max_age=0, lazy_batch=0, clock=clock)

    assert policy.purge_all(storage, share=share) == (2 * COMMAND_BATCH + 3, 0)
    # A pause after each full batch, none after the last, short one.
    assert pauses == pytest.approx([pause, pause])


@pytest.mark.parametrize("share", [0, -0.5, 1.5])
def test_purge_share_out_of_range_rejected(clock, share):
    from fuseline_broker.retention import Retention

    with pytest.raises(ValueError, match="share"):
        Retention(max_age=0, lazy_batch=0, clock=clock).purge_all(None, share=share)
