"""Workflow schemas the benchmark dispatches, and the results its workers report."""

import copy
import json
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DIAMOND_PATH = REPO_ROOT / "examples" / "diamond.json"
SHAPES = ("diamond", "chain", "fanout")
#: Run inputs of every dispatched instance.
INPUTS = {"a": 1, "b": 2}


def _step(name, predecessors, successors):
    """Return one step in the layout fuseline emits (see examples/diamond.json)."""
    return {
        "name": name,
        "successors": {"default": list(successors)} if successors else {},
        "predecessors": list(predecessors),
        "or_groups": {},
        "policies": [],
    }


def _chain_steps(k):
    names = [f"step{i}" for i in range(k)]
    steps = {}
    for i, name in enumerate(names):
        before = names[i - 1 : i] if i else []
        after = names[i + 1 : i + 2]
        steps[name] = _step(name, before, after)
    return steps


def _fanout_steps(k):
    """Return a source step, ``k`` parallel steps and a sink step that joins them."""
    middle = [f"step{i}" for i in range(1, k + 1)]
    sink = f"step{k + 1}"
    steps = {"step0": _step("step0", [], middle)}
    for name in middle:
        steps[name] = _step(name, ["step0"], [sink])
    steps[sink] = _step(sink, middle, [])
    return steps


def build_workflow(shape, k):
    """Return the workflow schema of a shape; ``k`` is ignored for the diamond."""
    if shape == "diamond":
        return json.loads(DIAMOND_PATH.read_text())
    if k < 1:
        raise ValueError(f"--k must be at least 1 for shape {shape!r}, received {k}")
    steps = _chain_steps(k) if shape == "chain" else _fanout_steps(k)
    last = list(steps)[-1]
    return {
        "workflow_id": f"bench-{shape}-{k}",
        "version": "1",
        "steps": steps,
        "outputs": [last],
        "policies": [],
    }


def renamed_workflow(workflow, workflow_id):
    """Return a copy of a workflow schema under another workflow id."""
    renamed = copy.deepcopy(workflow)
    renamed["workflow_id"] = workflow_id
    return renamed


def step_result(step_name, workflow, payload):
    """Return the result a benchmark worker reports for a step.

    A starting step returns ``a + b`` of the run inputs. Any other step
    returns one more than the sum of its predecessors' results.
    """
    step = workflow["steps"][step_name]
    if not step["predecessors"]:
        inputs = payload["workflow_inputs"]
        return inputs["a"] + inputs["b"]
    results = payload["results"]
    return 1 + sum(results[name] for name in step["predecessors"])


def success_report(assignment, workflow):
    """Return the report of a successful run of an assigned step, as JSON data."""
    name = assignment["step_name"]
    return {
        "workflow_id": assignment["workflow_id"],
        "instance_id": assignment["instance_id"],
        "step_name": name,
        "state": "SUCCEEDED",
        "result": step_result(name, workflow, assignment["payload"]),
    }


def topological_order(workflow):
    """Return the step names so that each step comes after its predecessors."""
    steps = workflow["steps"]
    ordered, placed = [], set()
    while len(ordered) < len(steps):
        for name, step in steps.items():
            if name not in placed and placed.issuperset(step["predecessors"]):
                ordered.append(name)
                placed.add(name)
    return ordered
