"""Many worker processes against one gunicorn broker."""

import multiprocessing
from collections import Counter

import pytest

from ..conftest import load_workflow
from .harness import ProtocolClient
from .workers import diamond_worker

pytestmark = pytest.mark.slow

INSTANCES = 200
WORKERS = 8


def collect(processes, out):
    reports = [out.get(timeout=300) for _ in processes]
    for process in processes:
        process.join(timeout=30)
    return reports


def test_eight_workers_two_hundred_diamonds(broker):
    workflow = load_workflow("diamond_and_join")
    client = ProtocolClient(broker.url)
    instance_ids = [
        client.dispatch(workflow, {"a": i, "b": 1}) for i in range(INSTANCES)
    ]

    context = multiprocessing.get_context("fork")
    out = context.Queue()
    processes = [
        context.Process(target=diamond_worker, args=(broker.url, workflow, out))
        for _ in range(WORKERS)
    ]
    for process in processes:
        process.start()
    reports = collect(processes, out)

    assert [r["errors"] for r in reports] == [[]] * WORKERS
    applied = Counter(key for r in reports for key in r["applied"])
    assert len(applied) == INSTANCES * 4
    assert set(applied.values()) == {1}
    assert [r["stale"] for r in reports] == [[]] * WORKERS
    # Every worker got some of the work, so the handouts really interleaved.
    assert all(r["applied"] for r in reports)

    for number, instance_id in enumerate(instance_ids):
        instance = client.get_instance(instance_id)
        assert instance["state"] == "SUCCEEDED"
        steps = instance["steps"]
        assert {name: len(s["assignments"]) for name, s in steps.items()} == {
            "step0": 1,
            "step1": 1,
            "step2": 1,
            "step3": 1,
        }
        total = number + 1
        assert steps["step3"]["result"] == total * 2 + total * 3
    assert " 500 " not in broker.log()
    assert "Traceback" not in broker.log()
