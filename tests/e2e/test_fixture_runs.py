"""Each real fuseline workflow run to its end through a gunicorn broker."""

import pytest

from ..conftest import load_workflow
from .harness import run_worker


def run_fixture(wire, name, inputs, decide):
    """Dispatch one run of a fixture, work it off with one worker, return both."""
    workflow = load_workflow(name)
    instance_id = wire.dispatch(workflow, inputs)
    worker_id = wire.register_worker([workflow])
    reports = run_worker(wire, worker_id, decide)
    return wire.get_instance(instance_id), reports


def step_states(instance):
    return {name: step["state"] for name, step in instance["steps"].items()}


def step_results(instance):
    return {name: step["result"] for name, step in instance["steps"].items()}


def test_diamond_adds_and_joins(wire):
    def decide(assignment):
        inputs, results = assignment["payload"].values()
        name = assignment["step_name"]
        if name == "step0":
            return "SUCCEEDED", inputs["a"] + inputs["b"]
        if name == "step1":
            return "SUCCEEDED", results["step0"] * 2
        if name == "step2":
            return "SUCCEEDED", results["step0"] * 3
        return "SUCCEEDED", results["step1"] + results["step2"]

    instance, reports = run_fixture(wire, "diamond_and_join", {"a": 1, "b": 2}, decide)

    assert instance["state"] == "SUCCEEDED"
    assert instance["inputs"] == {"a": 1, "b": 2}
    assert step_results(instance) == {"step0": 3, "step1": 6, "step2": 9, "step3": 15}
    assert set(step_states(instance).values()) == {"SUCCEEDED"}
    assert [r[0]["step_name"] for r in reports][0] == "step0"
    assert reports[-1][0]["step_name"] == "step3"
    assert reports[-1][0]["payload"]["results"] == {"step1": 6, "step2": 9}
    assert all(reply == {"applied": True} for *_, reply in reports)
    assert instance["finished_at"] is not None


def test_conditional_with_one_branch_skipped(wire):
    def decide(assignment):
        name = assignment["step_name"]
        if name == "step0":
            return "SUCCEEDED", 7
        if name == "step1":
            return "SUCCEEDED", assignment["payload"]["results"]["step0"] + 1
        return "SKIPPED", None

    instance, _ = run_fixture(wire, "conditional_skip", None, decide)

    assert instance["state"] == "SUCCEEDED"
    assert step_states(instance) == {
        "step0": "SUCCEEDED",
        "step1": "SUCCEEDED",
        "step2": "SKIPPED",
    }
    assert step_results(instance) == {"step0": 7, "step1": 8, "step2": None}


def test_or_join_runs_join_once(wire):
    workflow = load_workflow("or_join")
    instance_id = wire.dispatch(workflow, {})
    worker_id = wire.register_worker([workflow])

    first = wire.get_step(worker_id)[1]
    assert first["step_name"] == "step0"
    wire.report_step(worker_id, first, "SUCCEEDED", "from step0")
    # step1 was queued before the join, so it comes next; the join follows.
    second = wire.get_step(worker_id)[1]
    assert second["step_name"] == "step1"
    join = wire.get_step(worker_id)[1]
    assert join["step_name"] == "step2"
    assert join["payload"]["results"] == {"step0": "from step0"}
    wire.report_step(worker_id, second, "SUCCEEDED", "from step1")
    wire.report_step(worker_id, join, "SUCCEEDED", "joined")
    assert wire.get_step(worker_id)[0] == 204

    instance = wire.get_instance(instance_id)
    assert instance["state"] == "SUCCEEDED"
    assert instance["steps"]["step2"]["attempts"] == 1
    assert len(instance["steps"]["step2"]["assignments"]) == 1
    assert step_results(instance)["step2"] == "joined"


def test_router_takes_left_and_skips_right(wire):
    def decide(assignment):
        if assignment["step_name"] == "step0":
            return "SUCCEEDED", "left"
        return "SUCCEEDED", f"ran {assignment['step_name']}"

    instance, reports = run_fixture(wire, "branching_actions", {}, decide)

    assert instance["state"] == "SUCCEEDED"
    assert [r[0]["step_name"] for r in reports] == ["step0", "step1"]
    assert step_states(instance) == {
        "step0": "SUCCEEDED",
        "step1": "SUCCEEDED",
        "step2": "SKIPPED",
    }
    assert step_results(instance)["step1"] == "ran step1"


def test_policies_set_the_deadline(wire):
    def decide(assignment):
        return "SUCCEEDED", assignment["step_name"]

    instance, reports = run_fixture(wire, "policies_retry_timeout", {}, decide)

    first = reports[0][0]
    assert first["step_name"] == "step0"
    # 3 tries of 5 s, 2 waits of 0.5 s between them, and 30 s of grace.
    assert first["expires_at"] - first["assigned_at"] == pytest.approx(46.0)
    second = reports[1][0]
    # step1 has no timeout policy, so it gets the default STEP_TIMEOUT.
    assert second["expires_at"] - second["assigned_at"] == pytest.approx(300.0)
    assert instance["state"] == "SUCCEEDED"


def test_failure_cancels_rest_of_chain(wire):
    def decide(assignment):
        if assignment["step_name"] == "step1":
            return "FAILED", None
        return "SUCCEEDED", assignment["step_name"]

    instance, reports = run_fixture(wire, "chain_five", {}, decide)

    assert [r[0]["step_name"] for r in reports] == ["step0", "step1"]
    assert instance["state"] == "FAILED"
    assert step_states(instance) == {
        "step0": "SUCCEEDED",
        "step1": "FAILED",
        "step2": "CANCELLED",
        "step3": "CANCELLED",
        "step4": "CANCELLED",
    }
