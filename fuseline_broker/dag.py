"""Workflow graph rules: validation, readiness, branching, cancellation, completion.

This module works on plain dictionaries (a workflow definition as fuseline
sends it, and a mapping of step name to state) and has no storage code, so
every storage backend applies the same rules.
"""

import json
import math

PENDING = "PENDING"
QUEUED = "QUEUED"
RUNNING = "RUNNING"
SUCCEEDED = "SUCCEEDED"
FAILED = "FAILED"
CANCELLED = "CANCELLED"
SKIPPED = "SKIPPED"

#: States a worker may report for a step it ran.
REPORTABLE_STATES = (SUCCEEDED, FAILED, SKIPPED)
#: States after which a step never changes again.
TERMINAL_STATES = (SUCCEEDED, FAILED, CANCELLED, SKIPPED)
#: States that let a successor go ahead.
PASSING_STATES = (SUCCEEDED, SKIPPED)
#: States that stop a successor for good.
BLOCKING_STATES = (FAILED, CANCELLED)
#: States in which a step's result is handed on to its successors.
FINISHED_STATES = (SUCCEEDED, FAILED, SKIPPED)

DEFAULT_EDGE = "default"


class InvalidDefinition(ValueError):
    """A workflow definition breaks a structural rule."""


def definition_key(definition):
    """Return the ``(workflow_id, version)`` pair that identifies a definition."""
    return definition["workflow_id"], definition["version"]


def canonical_json(definition):
    """Serialize a definition the same way every time, for storage and comparison."""
    return json.dumps(definition, sort_keys=True, separators=(",", ":"))


def validate_definition(definition):
    """Raise InvalidDefinition naming the first structural fault of a definition.

    Each step's ``name`` must match its key. Every name used in successors,
    predecessors, OR groups and outputs must be a step, and OR group members
    must be predecessors. Predecessors and successors must agree, and the
    graph must have no cycle. Policies must give each step a finite deadline.
    """
    label = "workflow {!r} version {!r}".format(*definition_key(definition))
    steps = definition["steps"]
    if not steps:
        raise InvalidDefinition(f"{label} has no steps")

    for key, step in steps.items():
        if step["name"] != key:
            raise InvalidDefinition(
                f"{label}: step key {key!r} does not match its name {step['name']!r}"
            )
        _check_references(label, steps, key, step)

    for key, step in steps.items():
        try:
            budget = step_budget(step, default_timeout=0, grace=0)
        except (OverflowError, TypeError, ValueError):
            budget = math.inf
        if not math.isfinite(budget):
            raise InvalidDefinition(
                f"{label}: the timeout and retry policies of step {key!r} give "
                "no finite deadline"
            )

    for name in definition["outputs"]:
        if name not in steps:
            raise InvalidDefinition(f"{label}: output {name!r} is not a step")

    _check_edges_agree(label, steps)
    _check_acyclic(label, steps)


def _check_references(label, steps, key, step):
    for action, targets in step["successors"].items():
        for target in targets:
            if target not in steps:
                raise InvalidDefinition(
                    f"{label}: step {key!r} has successor {target!r} "
                    f"(action {action!r}), which is not a step"
                )
    predecessors = step["predecessors"]
    for name in predecessors:
        if name not in steps:
            raise InvalidDefinition(
                f"{label}: step {key!r} has predecessor {name!r}, which is not a step"
            )
    if len(set(predecessors)) != len(predecessors):
        raise InvalidDefinition(f"{label}: step {key!r} lists a predecessor twice")
    for group, members in step["or_groups"].items():
        if not members:
            raise InvalidDefinition(
                f"{label}: step {key!r} has empty OR group {group!r}"
            )
        for name in members:
            if name not in steps:
                raise InvalidDefinition(
                    f"{label}: OR group {group!r} of step {key!r} names "
                    f"{name!r}, which is not a step"
                )
            if name not in predecessors:
                raise InvalidDefinition(
                    f"{label}: OR group {group!r} of step {key!r} names "
                    f"{name!r}, which is not one of its predecessors"
                )


def _check_edges_agree(label, steps):
    for key, step in steps.items():
        for targets in step["successors"].values():
            for target in targets:
                if key not in steps[target]["predecessors"]:
                    raise InvalidDefinition(
                        f"{label}: step {key!r} lists successor {target!r}, "
                        f"but {target!r} does not list {key!r} as a predecessor"
                    )
        for name in step["predecessors"]:
            followers = {t for ts in steps[name]["successors"].values() for t in ts}
            if key not in followers:
                raise InvalidDefinition(
                    f"{label}: step {key!r} lists predecessor {name!r}, "
                    f"but {name!r} does not list {key!r} as a successor"
                )


def _check_acyclic(label, steps):
    # Kahn's algorithm: whatever cannot be ordered lies on or behind a cycle.
    waiting = {key: len(step["predecessors"]) for key, step in steps.items()}
    ready = [key for key, count in waiting.items() if count == 0]
    ordered = 0
    while ready:
        key = ready.pop()
        ordered += 1
        for target in successor_names(steps[key]):
            waiting[target] -= 1
            if waiting[target] == 0:
                ready.append(target)
    if ordered != len(steps):
        stuck = sorted(key for key, count in waiting.items() if count > 0)
        raise InvalidDefinition(f"{label}: steps {stuck} form or follow a cycle")


def successor_names(step):
    """Return every step reachable by one edge of any action, without repeats."""
    names = []
    for targets in step["successors"].values():
        for target in targets:
            if target not in names:
                names.append(target)
    return names


def describe_difference(stored, received):
    """Return a sentence naming how two definitions differ, or None if they match."""
    if canonical_json(stored) == canonical_json(received):
        return None
    old_steps, new_steps = stored["steps"], received["steps"]
    added = sorted(set(new_steps) - set(old_steps))
    removed = sorted(set(old_steps) - set(new_steps))
    if added or removed:
        return f"steps added {added}, steps removed {removed}"
    for name in sorted(old_steps):
        for field in ("successors", "predecessors", "or_groups", "policies"):
            old_value = old_steps[name].get(field)
            new_value = new_steps[name].get(field)
            if canonical_json(old_value) != canonical_json(new_value):
                return (
                    f"step {name!r} field {field!r} is "
                    f"{canonical_json(old_value)}, received {canonical_json(new_value)}"
                )
    for field in ("outputs", "policies"):
        old_value, new_value = stored.get(field), received.get(field)
        if canonical_json(old_value) != canonical_json(new_value):
            return (
                f"field {field!r} is {canonical_json(old_value)}, "
                f"received {canonical_json(new_value)}"
            )
    return "the definitions differ"


def starting_steps(definition):
    """Return the steps with no predecessors, in definition order."""
    return [k for k, s in definition["steps"].items() if not s["predecessors"]]


def step_budget(step, default_timeout, grace):
    """Return the seconds a worker may hold a step before it is taken back.

    A step with a ``timeout`` policy is retried in place by the worker, so it
    gets ``max_retries * seconds + (max_retries - 1) * wait + grace``; any
    other step gets ``default_timeout``.
    """
    policies = {p["name"]: p.get("config") or {} for p in step.get("policies", [])}
    timeout = policies.get("timeout")
    if timeout is None or timeout.get("seconds") is None:
        return float(default_timeout)
    retry = policies.get("retry", {})
    tries = max(int(retry.get("max_retries", 1) or 1), 1)
    wait = float(retry.get("wait", 0) or 0)
    return tries * float(timeout["seconds"]) + (tries - 1) * wait + float(grace)


def followed_successors(step, state, result):
    """Return the successors to consider after a step ends with ``state``.

    A string result naming one of the step's actions selects that edge alone;
    any other result follows the ``default`` edge. A failed step follows none.
    """
    if state not in PASSING_STATES:
        return []
    edges = step["successors"]
    if isinstance(result, str) and result in edges:
        return list(edges[result])
    return list(edges.get(DEFAULT_EDGE, []))


def is_ready(step, states):
    """Tell whether every AND predecessor and one member of each OR group passed."""
    grouped = {name for members in step["or_groups"].values() for name in members}
    for name in step["predecessors"]:
        if name not in grouped and states[name] not in PASSING_STATES:
            return False
    return all(
        any(states[name] in PASSING_STATES for name in members)
        for members in step["or_groups"].values()
    )


def can_never_run(step, states):
    """Tell whether a waiting step is blocked for good by failed predecessors."""
    grouped = {name for members in step["or_groups"].values() for name in members}
    for name in step["predecessors"]:
        if name not in grouped and states[name] in BLOCKING_STATES:
            return True
    return any(
        all(states[name] in BLOCKING_STATES for name in members)
        for members in step["or_groups"].values()
    )


def steps_to_cancel(definition, states):
    """Return the pending steps that can no longer run, following chains of them.

    ``states`` is not changed; the caller marks the returned steps CANCELLED.
    """
    view = dict(states)
    cancelled = []
    changed = True
    while changed:
        changed = False
        for name, step in definition["steps"].items():
            if view[name] == PENDING and can_never_run(step, view):
                view[name] = CANCELLED
                cancelled.append(name)
                changed = True
    return cancelled


def outcome_if_finished(states):
    """Return the instance's final state, or None while a step is queued or running.

    When the instance is finished every step still PENDING was never reached
    (an untaken branch), and the caller marks it SKIPPED.
    """
    values = states.values()
    if any(state in (QUEUED, RUNNING) for state in values):
        return None
    return FAILED if FAILED in values else SUCCEEDED


def predecessor_results(step, states, results):
    """Return the stored result of each finished predecessor, nulls included."""
    return {
        name: results.get(name)
        for name in step["predecessors"]
        if states[name] in FINISHED_STATES
    }
