"""The graph rules, on plain dictionaries."""

import copy

import pytest

from fuseline_broker import dag

from .conftest import FIXTURE_NAMES, load_workflow


def make_workflow(edges, or_groups=None):
    """Build a definition from ``{step: {action: [successors]}}``."""
    steps = {
        name: {
            "name": name,
            "successors": actions,
            "predecessors": [],
            "or_groups": {},
            "policies": [],
        }
        for name, actions in edges.items()
    }
    for name, actions in edges.items():
        for targets in actions.values():
            for target in targets:
                if name not in steps[target]["predecessors"]:
                    steps[target]["predecessors"].append(name)
    for name, groups in (or_groups or {}).items():
        steps[name]["or_groups"] = groups
    return {
        "workflow_id": "wf",
        "version": "1",
        "steps": steps,
        "outputs": [],
        "policies": [],
    }


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_fixtures_are_valid(name):
    assert dag.validate_definition(load_workflow(name)) is None


def broken(change):
    workflow = load_workflow("diamond_and_join")
    change(workflow["steps"])
    return workflow


@pytest.mark.parametrize(
    "workflow, fragment",
    [
        (broken(lambda s: s["step1"].update(name="other")), "does not match"),
        (
            broken(lambda s: s["step1"]["successors"]["default"].append("ghost")),
            "successor 'ghost'",
        ),
        (broken(lambda s: s["step3"]["predecessors"].append("ghost")), "'ghost'"),
        (
            broken(lambda s: s["step3"]["predecessors"].append("step1")),
            "predecessor twice",
        ),
        (broken(lambda s: s["step3"]["predecessors"].remove("step2")), "step2"),
        (
            broken(lambda s: s["step2"]["successors"]["default"].remove("step3")),
            "does not list 'step3' as a successor",
        ),
        (
            broken(lambda s: s["step3"]["or_groups"].update(g=["step0"])),
            "not one of its predecessors",
        ),
        (broken(lambda s: s["step3"]["or_groups"].update(g=[])), "empty OR group"),
        (broken(lambda s: s.clear()), "no steps"),
    ],
)
def test_invalid_definitions_rejected(workflow, fragment):
    with pytest.raises(dag.InvalidDefinition, match=fragment):
        dag.validate_definition(workflow)


def test_cycle_rejected():
    workflow = make_workflow(
        {"a": {"default": ["b"]}, "b": {"default": ["c"]}, "c": {"default": ["b"]}}
    )
    with pytest.raises(dag.InvalidDefinition, match=r"\['b', 'c'\]"):
        dag.validate_definition(workflow)


def test_unknown_output_rejected():
    workflow = make_workflow({"a": {}})
    workflow["outputs"] = ["z"]
    with pytest.raises(dag.InvalidDefinition, match="output 'z'"):
        dag.validate_definition(workflow)


def test_difference_names_changed_field():
    stored = load_workflow("chain_five")
    received = copy.deepcopy(stored)
    received["steps"]["step2"]["policies"] = [{"name": "retry", "config": {}}]
    difference = dag.describe_difference(stored, received)
    assert "'step2'" in difference
    assert "'policies'" in difference
    assert dag.describe_difference(stored, copy.deepcopy(stored)) is None


def test_difference_names_added_step():
    stored = make_workflow({"a": {}})
    received = make_workflow({"a": {}, "b": {}})
    assert dag.describe_difference(stored, received) == (
        "steps added ['b'], steps removed []"
    )


@pytest.mark.parametrize(
    "policies, budget",
    [
        ([], 300.0),
        ([{"name": "retry", "config": {"max_retries": 4, "wait": 1}}], 300.0),
        ([{"name": "timeout", "config": {"seconds": 5}}], 35.0),
        (
            [
                {"name": "retry", "config": {"max_retries": 3, "wait": 0.5}},
                {"name": "timeout", "config": {"seconds": 5.0}},
            ],
            46.0,
        ),
    ],
)
def test_step_budget(policies, budget):
    step = {"policies": policies}
    assert dag.step_budget(step, default_timeout=300, grace=30) == budget


def test_string_result_selects_edge():
    step = load_workflow("branching_actions")["steps"]["step0"]
    assert dag.followed_successors(step, "SUCCEEDED", "left") == ["step1"]
    assert dag.followed_successors(step, "SKIPPED", "right") == ["step2"]
    assert dag.followed_successors(step, "SUCCEEDED", "up") == []
    assert dag.followed_successors(step, "FAILED", "left") == []


def test_other_result_follows_default():
    step = load_workflow("diamond_and_join")["steps"]["step0"]
    assert dag.followed_successors(step, "SUCCEEDED", 3) == ["step1", "step2"]
    assert dag.followed_successors(step, "SUCCEEDED", "step1") == ["step1", "step2"]


def test_and_join_needs_every_predecessor():
    join = load_workflow("diamond_and_join")["steps"]["step3"]
    assert not dag.is_ready(join, {"step1": "SUCCEEDED", "step2": "RUNNING"})
    assert dag.is_ready(join, {"step1": "SUCCEEDED", "step2": "SKIPPED"})


def test_or_join_needs_one_member():
    join = load_workflow("or_join")["steps"]["step2"]
    assert dag.is_ready(join, {"step0": "SUCCEEDED", "step1": "QUEUED"})
    assert dag.is_ready(join, {"step0": "FAILED", "step1": "SKIPPED"})
    assert not dag.is_ready(join, {"step0": "FAILED", "step1": "RUNNING"})


def test_failure_cancels_transitively():
    workflow = load_workflow("chain_five")
    states = {
        "step0": "SUCCEEDED",
        "step1": "FAILED",
        "step2": "PENDING",
        "step3": "PENDING",
        "step4": "PENDING",
    }
    assert dag.steps_to_cancel(workflow, states) == ["step2", "step3", "step4"]
    assert states["step2"] == "PENDING"


def test_or_group_survives_one_failure():
    workflow = load_workflow("or_join")
    states = {"step0": "FAILED", "step1": "RUNNING", "step2": "PENDING"}
    assert dag.steps_to_cancel(workflow, states) == []
    states["step1"] = "CANCELLED"
    assert dag.steps_to_cancel(workflow, states) == ["step2"]


def test_independent_branch_goes_on():
    workflow = make_workflow(
        {"a": {"default": ["b"]}, "b": {}, "c": {"default": ["d"]}, "d": {}}
    )
    states = {"a": "FAILED", "b": "PENDING", "c": "SUCCEEDED", "d": "QUEUED"}
    assert dag.steps_to_cancel(workflow, states) == ["b"]


def test_outcome_waits_for_running_steps():
    assert dag.outcome_if_finished({"a": "SUCCEEDED", "b": "RUNNING"}) is None
    assert dag.outcome_if_finished({"a": "SUCCEEDED", "b": "QUEUED"}) is None
    assert dag.outcome_if_finished({"a": "SUCCEEDED", "b": "PENDING"}) == "SUCCEEDED"
    assert dag.outcome_if_finished({"a": "FAILED", "b": "CANCELLED"}) == "FAILED"


def test_predecessor_results_keep_nulls():
    join = load_workflow("or_join")["steps"]["step2"]
    states = {"step0": "SUCCEEDED", "step1": "RUNNING"}
    assert dag.predecessor_results(join, states, {"step0": None}) == {"step0": None}
