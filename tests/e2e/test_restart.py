"""A broker killed with SIGKILL mid-run loses nothing that it acknowledged."""

import multiprocessing
import time
from collections import Counter

import pytest

from ..conftest import load_workflow
from .harness import ProtocolClient, wait_for
from .workers import count_running, diamond_worker

pytestmark = pytest.mark.slow

INSTANCES = 50
WORKERS = 4
# Short, so a step whose handout reply died with the broker comes back soon.
RESTART_ENV = {"FUSELINE_BROKER_STEP_TIMEOUT": "3"}


def test_sigkill_mid_run_then_restart(start_broker):
    server = start_broker(env=RESTART_ENV)
    client = ProtocolClient(server.url)
    workflow = load_workflow("diamond_and_join")
    instance_ids = [
        client.dispatch(workflow, {"a": i, "b": 0}) for i in range(INSTANCES)
    ]

    context = multiprocessing.get_context("fork")
    out = context.Queue()
    processes = [
        context.Process(
            target=diamond_worker,
            args=(server.url, workflow, out),
            kwargs={"retry_connection": True},
        )
        for _ in range(WORKERS)
    ]
    for process in processes:
        process.start()

    def finished_steps():
        instances = [client.get_instance(i) for i in instance_ids[:10]]
        done = sum(
            step["state"] == "SUCCEEDED"
            for instance in instances
            for step in instance["steps"].values()
        )
        return done >= 8

    wait_for(finished_steps, timeout=60, interval=0.02)
    running_at_kill = count_running(server.url)
    server.kill()
    time.sleep(0.5)
    restarted = start_broker(server.database, env=RESTART_ENV, port=server.port)

    reports = [out.get(timeout=300) for _ in processes]
    for process in processes:
        process.join(timeout=30)

    assert running_at_kill > 0
    assert [r["errors"] for r in reports] == [[]] * WORKERS
    applied = Counter(key for r in reports for key in r["applied"])
    assert set(applied.values()) == {1}
    # A report stored just before the kill may have lost its reply. The
    # worker's retry then gets "already applied" and is never applied twice.
    retried = {
        key for r in reports for key, reason in r["stale"] if "already" in reason
    }
    assert not retried & set(applied)
    assert len(applied) + len(retried) == INSTANCES * 4
    client = ProtocolClient(restarted.url)
    for number, instance_id in enumerate(instance_ids):
        instance = client.get_instance(instance_id)
        assert instance["state"] == "SUCCEEDED"
        assert instance["steps"]["step3"]["result"] == number * 5
