"""Broken and hostile requests: the right 4xx, the value named, nothing changed."""

import json
import sqlite3

import pytest

from ..conftest import load_workflow
from .harness import ProtocolClient
from .test_wire_contract import raw_request

LIMITS_ENV = {
    "FUSELINE_BROKER_MAX_NAME_LENGTH": "64",
    "FUSELINE_BROKER_MAX_STEPS": "20",
    "FUSELINE_BROKER_MAX_RESULT_BYTES": "2000",
    "FUSELINE_BROKER_MAX_JSON_DEPTH": "8",
    "FUSELINE_BROKER_MAX_CONTENT_LENGTH": "400000",
}


def dump(database):
    """Return every row of the database as SQL text, for before/after checks."""
    with sqlite3.connect(database) as conn:
        return "\n".join(conn.iterdump())


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """A broker holding a repository, a worker and a run with one step taken."""
    from .harness import BrokerServer

    database = tmp_path_factory.mktemp("hostile") / "broker.db"
    server = BrokerServer(database, env=LIMITS_ENV).start()
    client = ProtocolClient(server.url)
    client.register_repository(
        {"name": "repo", "url": "u", "workflows": ["a:b"], "credentials": {}}
    )
    workflow = load_workflow("chain_five")
    instance_id = client.dispatch(workflow, {"x": 1})
    worker_id = client.register_worker([workflow])
    assignment = client.get_step(worker_id)[1]
    done = load_workflow("conditional_skip")
    finished_id = client.dispatch(done, {})
    finisher = client.register_worker([done])
    held = []
    while True:
        status, step = client.get_step(finisher)
        if status == 204:
            break
        held.append(step)
        client.report_step(finisher, step, "SUCCEEDED", None)
    yield {
        "server": server,
        "worker_id": worker_id,
        "assignment": assignment,
        "instance_id": instance_id,
        "finisher": finisher,
        "finished_step": held[0],
        "finished_id": finished_id,
    }
    server.stop()


def report_body(seeded, **change):
    assignment = seeded["assignment"]
    body = {
        "workflow_id": assignment["workflow_id"],
        "instance_id": assignment["instance_id"],
        "step_name": assignment["step_name"],
        "state": "SUCCEEDED",
        "result": 1,
    }
    body.update(change)
    return json.dumps(body).encode()


def nested(depth):
    value = 1
    for _ in range(depth):
        value = [value]
    return value


def chain_of(count):
    workflow = load_workflow("chain_five")
    steps = {}
    for i in range(count):
        following = {"default": [f"s{i + 1}"]} if i + 1 < count else {}
        steps[f"s{i}"] = {
            "name": f"s{i}",
            "successors": following,
            "predecessors": [f"s{i - 1}"] if i else [],
            "or_groups": {},
            "policies": [],
        }
    return {**workflow, "workflow_id": f"chain-of-{count}", "steps": steps}


JSON = "application/json"
WORKER = "/workflow/step?worker_id={worker_id}"
CASES = [
    # (name, method, path, body or callable(seeded), content type, status, named)
    ("empty body", "POST", "/workflow/dispatch", b"", JSON, 422, "workflow"),
    ("empty register", "POST", "/worker/register", b"", JSON, 422, "body"),
    (
        "not json",
        "POST",
        "/workflow/dispatch",
        b"workflow=x",
        JSON,
        400,
        "invalid JSON",
    ),
    (
        "form body",
        "POST",
        "/workflow/dispatch",
        b"a=b",
        "text/plain",
        415,
        "text/plain",
    ),
    ("json null", "POST", "/workflow/dispatch", b"null", JSON, 422, "null"),
    ("list for object", "POST", "/workflow/dispatch", b"[1, 2]", JSON, 422, "[1, 2]"),
    ("object for list", "POST", "/worker/register", b'{"a": 1}', JSON, 422, "body"),
    (
        "string for number",
        "POST",
        "/worker/register",
        lambda s: json.dumps([_with_timeout("5")]).encode(),
        JSON,
        422,
        '"5"',
    ),
    ("page not a number", "GET", "/repository?page=two", b"", JSON, 422, '"two"'),
    (
        "unknown state",
        "POST",
        WORKER,
        lambda s: report_body(s, state="DONE"),
        JSON,
        422,
        "DONE",
    ),
    (
        "state not reportable",
        "POST",
        WORKER,
        lambda s: report_body(s, state="RUNNING"),
        JSON,
        422,
        "RUNNING",
    ),
    (
        "unknown worker",
        "POST",
        "/workflow/step?worker_id=ghost-worker",
        lambda s: report_body(s),
        JSON,
        404,
        "ghost-worker",
    ),
    (
        "result too large",
        "POST",
        WORKER,
        lambda s: report_body(s, result="x" * 3000),
        JSON,
        422,
        "maximum is 2000",
    ),
    (
        "result too deep",
        "POST",
        WORKER,
        lambda s: report_body(s, result=nested(9)),
        JSON,
        422,
        "9 levels",
    ),
    (
        "inputs too deep",
        "POST",
        "/workflow/dispatch",
        lambda s: json.dumps(
            {"workflow": load_workflow("chain_five"), "inputs": {"a": nested(9)}}
        ).encode(),
        JSON,
        422,
        "levels",
    ),
    (
        "json nested past parser",
        "POST",
        "/workflow/dispatch",
        b"[" * 100_000 + b"]" * 100_000,
        JSON,
        400,
        "nest",
    ),
    (
        "too many steps",
        "POST",
        "/worker/register",
        lambda s: json.dumps([chain_of(21)]).encode(),
        JSON,
        422,
        "21 steps",
    ),
    (
        "name too long",
        "POST",
        "/repository/register",
        json.dumps({"name": "n" * 65, "url": "u", "workflows": []}).encode(),
        JSON,
        422,
        "at most 64",
    ),
    (
        "worker id too long",
        "POST",
        "/worker/keep-alive?worker_id=" + "w" * 65,
        b"",
        JSON,
        422,
        "at most 64",
    ),
    (
        "body over limit",
        "POST",
        "/workflow/dispatch",
        b'{"inputs": "' + b"x" * 500_000 + b'"}',
        JSON,
        413,
        "413",
    ),
    (
        "report for finished instance",
        "POST",
        "/workflow/step?worker_id={finisher}",
        lambda s: json.dumps(
            {
                "workflow_id": "conditional",
                "instance_id": s["finished_id"],
                "step_name": s["finished_step"]["step_name"],
                "state": "FAILED",
                "result": None,
            }
        ).encode(),
        JSON,
        409,
        "already finished",
    ),
    (
        "report by stranger",
        "POST",
        "/workflow/step?worker_id={finisher}",
        lambda s: report_body(s),
        JSON,
        409,
        "never held",
    ),
]


def _with_timeout(seconds):
    workflow = load_workflow("policies_retry_timeout")
    workflow["steps"]["step0"]["policies"][1]["config"]["seconds"] = seconds
    return workflow


@pytest.mark.parametrize(
    "method, path, body, content_type, status, named",
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_rejected_without_change(
    seeded, method, path, body, content_type, status, named
):
    server = seeded["server"]
    if callable(body):
        body = body(seeded)
    path = path.format(**seeded)
    before = dump(server.database)

    code, headers, reply = raw_request(
        server.url, method, path, body, {"Content-Type": content_type}
    )

    assert code == status
    assert headers["Content-Type"] == "application/json"
    error = json.loads(reply)
    assert error["code"] == status
    assert named in json.dumps(error, ensure_ascii=False) or named in error.get(
        "message", ""
    )
    assert dump(server.database) == before


@pytest.mark.parametrize(
    "name",
    [
        "流程-ünïcode",
        "x'); drop table workflows; --",
        "<script>alert(1)</script>&amp;",
    ],
)
def test_odd_names_stored_verbatim(seeded, name):
    client = ProtocolClient(seeded["server"].url)
    workflow = {**load_workflow("chain_five"), "workflow_id": name}
    instance_id = client.dispatch(workflow, {"label": name})
    worker_id = client.register_worker([workflow])
    assignment = client.get_step(worker_id)[1]

    assert assignment["workflow_id"] == name
    assert assignment["payload"]["workflow_inputs"] == {"label": name}
    instance = client.get_instance(instance_id)
    assert instance["workflow_id"] == name
    status, headers, body = raw_request(
        seeded["server"].url, "GET", f"/workflow/instances/{instance_id}"
    )
    # Served as JSON, so a browser never renders the markup in a name.
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body)["inputs"] == {"label": name}


def test_ten_thousand_input_keys(seeded):
    client = ProtocolClient(seeded["server"].url)
    inputs = {f"key{i}": i for i in range(10_000)}
    instance_id = client.dispatch(load_workflow("chain_five"), inputs)
    assert client.get_instance(instance_id)["inputs"] == inputs
