"""Every rule fuseline workers rely on, checked over raw HTTP against gunicorn."""

import http.client
import json
import os
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from ..conftest import FIXTURES, load_workflow
from .harness import BrokerHTTPError, ProtocolClient

RECORDING = Path(
    os.environ.get(
        "FUSELINE_WIRE_RECORDING",
        FIXTURES.parents[1] / "contract" / "worker-session.requests.json",
    )
)
ASSIGNMENT_KEYS = {
    "workflow_id",
    "instance_id",
    "step_name",
    "payload",
    "assigned_at",
    "expires_at",
}
REPOSITORY = {
    "name": "lab-workflows",
    "url": "https://git.example.org/lab/workflows.git",
    "workflows": ["lab_flows.math:workflow", "lab_flows.etl:pipeline"],
    "credentials": {"username": "ci", "token": "s3cret-value"},
}


def raw_request(base_url, method, path, body=b"", headers=None):
    """Send one request with exactly the given bytes; return status, headers, body."""
    parts = urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        reply = conn.getresponse()
        return reply.status, dict(reply.getheaders()), reply.read()
    finally:
        conn.close()


def test_recorded_worker_session_replays(wire):
    """Replay a real fuseline worker session; every call must succeed."""
    requests = json.loads(RECORDING.read_text())
    worker_id = instance_id = None
    assignment = None
    for recorded in requests:
        path = recorded["path_and_query"]
        body = recorded["request_body"]
        if worker_id is not None:
            path = path.replace("worker_id=31", f"worker_id={worker_id}")
        if isinstance(body, dict) and "instance_id" in body:
            # The recording's ids belong to its own broker: report the step
            # this broker handed out, with the recorded state and result.
            body = {**body, "instance_id": instance_id}
            assert body["step_name"] == assignment["step_name"]
        raw = None
        if body == "":
            raw, body = b"", None
        status, parsed = wire.call(recorded["method"], path, body, raw_body=raw)

        assert 200 <= status < 300, recorded
        if path == "/worker/register":
            worker_id = parsed
        elif path == "/workflow/dispatch":
            instance_id = parsed
        elif path.startswith("/workflow/step") and recorded["method"] == "GET":
            assignment = parsed
            assert (status == 204) == (recorded["status_seen"] == 204)

    instance = wire.get_instance(instance_id)
    assert instance["state"] == "SUCCEEDED"
    results = {name: step["result"] for name, step in instance["steps"].items()}
    assert results == {"step0": 3, "step1": 6, "step2": 9, "step3": 15}


def test_register_and_dispatch_return_bare_strings(broker, wire):
    workflow = load_workflow("diamond_and_join")
    status, headers, body = raw_request(
        broker.url,
        "POST",
        "/worker/register",
        json.dumps([workflow]).encode(),
        {"Content-type": "application/json"},
    )
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert isinstance(json.loads(body), str)

    instance_id = wire.dispatch(workflow, None)
    assert isinstance(instance_id, str)
    assert len(instance_id) >= 16


def test_ids_are_unique(wire):
    workflow = load_workflow("diamond_and_join")
    worker_ids = {wire.register_worker([workflow]) for _ in range(5)}
    instance_ids = {wire.dispatch(workflow, {}) for _ in range(5)}
    assert len(worker_ids) == 5
    assert len(instance_ids) == 5


def test_no_work_is_204_with_empty_body(broker, wire):
    worker_id = wire.register_worker([load_workflow("chain_five")])
    status, headers, body = raw_request(
        broker.url, "GET", f"/workflow/step?worker_id={worker_id}"
    )
    assert status == 204
    assert body == b""
    assert "content-type" not in {name.lower() for name in headers}


def test_assignment_has_exactly_six_keys(wire):
    workflow = load_workflow("diamond_and_join")
    instance_id = wire.dispatch(workflow, {"a": 1, "b": 2})
    worker_id = wire.register_worker([workflow])

    status, assignment = wire.get_step(worker_id)

    assert status == 200
    assert set(assignment) == ASSIGNMENT_KEYS
    assert assignment["instance_id"] == instance_id
    assert assignment["workflow_id"] == "math-diamond"
    assert set(assignment["payload"]) == {"workflow_inputs", "results"}
    assert assignment["payload"]["workflow_inputs"] == {"a": 1, "b": 2}
    assert isinstance(assignment["assigned_at"], float)
    assert isinstance(assignment["expires_at"], float)
    assert assignment["expires_at"] > assignment["assigned_at"]


def test_results_include_null_results(wire):
    workflow = load_workflow("diamond_and_join")
    wire.dispatch(workflow, {})
    worker_id = wire.register_worker([workflow])
    for _ in range(3):
        assignment = wire.get_step(worker_id)[1]
        wire.report_step(worker_id, assignment, "SUCCEEDED", None)

    join = wire.get_step(worker_id)[1]

    assert join["step_name"] == "step3"
    assert join["payload"]["results"] == {"step1": None, "step2": None}


def test_keep_alive_accepts_empty_json_body(broker, wire):
    worker_id = wire.register_worker([load_workflow("chain_five")])
    status, _, body = raw_request(
        broker.url,
        "POST",
        f"/worker/keep-alive?worker_id={worker_id}",
        b"",
        {"Content-type": "application/json", "Content-Length": "0"},
    )
    assert status == 204
    assert body == b""


def test_keep_alive_unknown_worker_is_404(broker):
    status, headers, body = raw_request(
        broker.url,
        "POST",
        "/worker/keep-alive?worker_id=nobody",
        b"",
        {"Content-type": "application/json"},
    )
    assert status == 404
    assert headers["Content-Type"] == "application/json"
    assert "nobody" in json.loads(body)["message"]


def test_repository_by_name_has_credentials(wire):
    assert wire.register_repository(REPOSITORY) is None

    record = wire.get_repository("lab-workflows")

    assert record == REPOSITORY
    assert set(record) == {"name", "url", "workflows", "credentials"}


def test_repository_register_replaces_record(wire):
    wire.register_repository(REPOSITORY)
    changed = {**REPOSITORY, "url": "https://git.example.org/other.git"}
    wire.register_repository(changed)

    assert wire.get_repository("lab-workflows")["url"] == changed["url"]
    assert len(wire.list_repositories(1)) == 1


def test_repository_listing_masks_credentials(wire):
    wire.register_repository(REPOSITORY)
    wire.register_repository({**REPOSITORY, "name": "aaa-first", "credentials": {}})

    listing = wire.list_repositories(1)

    assert [r["name"] for r in listing] == ["aaa-first", "lab-workflows"]
    assert all(set(r) == {"name", "url", "workflows", "credentials"} for r in listing)
    assert listing[1]["credentials"].keys() == {"username", "token"}
    assert "s3cret-value" not in json.dumps(listing)
    assert wire.list_repositories(2) == []


def test_repository_pages_are_ordered(wire):
    for name in ["r3", "r1", "r2"]:
        wire.register_repository({**REPOSITORY, "name": name})
    _, page_one = wire.call("GET", "/repository?page=1&page_size=2")
    _, page_two = wire.call("GET", "/repository?page=2&page_size=2")
    assert [r["name"] for r in page_one] == ["r1", "r2"]
    assert [r["name"] for r in page_two] == ["r3"]


def test_unknown_repository_is_404_json(wire):
    with pytest.raises(BrokerHTTPError) as caught:
        wire.get_repository("missing-repo")
    assert caught.value.status == 404
    assert "missing-repo" in json.loads(caught.value.body)["message"]


def test_workers_listing_shape(wire):
    workflow = load_workflow("diamond_and_join")
    worker_id = wire.register_worker([workflow])
    listing = wire.list_workers()
    assert [w["worker_id"] for w in listing] == [worker_id]
    assert set(listing[0]) == {"worker_id", "connected_at", "last_seen", "last_task"}
    assert listing[0]["last_task"] is None

    wire.dispatch(workflow, {"a": 1, "b": 2})
    assignment = wire.get_step(worker_id)[1]
    wire.report_step(worker_id, assignment, "SUCCEEDED", 3)

    last_task = wire.list_workers()[0]["last_task"]
    assert last_task == {
        "workflow_id": "math-diamond",
        "instance_id": assignment["instance_id"],
        "step_name": "step0",
        "success": True,
    }


def test_workflows_lists_entry_points(wire):
    wire.register_repository(REPOSITORY)
    _, entries = wire.call("GET", "/workflows")
    assert entries == [
        {"repository": "lab-workflows", "workflow": "lab_flows.math:workflow"},
        {"repository": "lab-workflows", "workflow": "lab_flows.etl:pipeline"},
    ]


def test_status_is_ok(wire):
    assert wire.call("GET", "/status") == (200, {"status": "ok"})


def test_report_answers_applied(wire):
    workflow = load_workflow("chain_five")
    wire.dispatch(workflow, {})
    worker_id = wire.register_worker([workflow])
    assignment = wire.get_step(worker_id)[1]

    assert wire.report_step(worker_id, assignment, "SUCCEEDED", 1) == {"applied": True}
    # The same report again, as a retried request would send it.
    repeated = wire.report_step(worker_id, assignment, "SUCCEEDED", 1)
    assert repeated["applied"] is False
    assert "already applied" in repeated["reason"]


def test_report_of_step_never_held_is_409(wire):
    workflow = load_workflow("chain_five")
    wire.dispatch(workflow, {})
    holder = wire.register_worker([workflow])
    stranger = wire.register_worker([workflow])
    assignment = wire.get_step(holder)[1]

    with pytest.raises(BrokerHTTPError) as caught:
        wire.report_step(stranger, assignment, "SUCCEEDED", 1)

    assert caught.value.status == 409
    assert stranger in json.loads(caught.value.body)["message"]
    # The holder's own report still goes through: nothing was changed.
    assert wire.report_step(holder, assignment, "SUCCEEDED", 1) == {"applied": True}


@pytest.mark.parametrize(
    "change, status, named",
    [
        ({"instance_id": "no-such-instance"}, 404, "no-such-instance"),
        ({"workflow_id": "other-workflow"}, 404, "other-workflow"),
        ({"step_name": "step9"}, 404, "step9"),
        ({"state": "PENDING"}, 422, "PENDING"),
        ({"state": "DONE"}, 422, "DONE"),
    ],
)
def test_bad_report_rejected(wire, change, status, named):
    workflow = load_workflow("chain_five")
    instance_id = wire.dispatch(workflow, {})
    worker_id = wire.register_worker([workflow])
    assignment = wire.get_step(worker_id)[1]
    report = {
        "workflow_id": assignment["workflow_id"],
        "instance_id": assignment["instance_id"],
        "step_name": assignment["step_name"],
        "state": "SUCCEEDED",
        "result": 1,
        **change,
    }

    with pytest.raises(BrokerHTTPError) as caught:
        wire.call("POST", f"/workflow/step?worker_id={worker_id}", report)

    assert caught.value.status == status
    assert named in json.loads(caught.value.body)["message"]
    step = wire.get_instance(instance_id)["steps"]["step0"]
    assert step["state"] == "RUNNING"
    assert step["result"] is None


def test_changed_definition_is_409(wire):
    workflow = load_workflow("chain_five")
    wire.register_worker([workflow])
    assert isinstance(wire.register_worker([workflow]), str)
    changed = json.loads(json.dumps(workflow))
    changed["steps"]["step4"]["policies"] = [
        {"name": "timeout", "config": {"seconds": 9}}
    ]

    for send in (
        lambda: wire.register_worker([changed]),
        lambda: wire.dispatch(changed, {}),
    ):
        with pytest.raises(BrokerHTTPError) as caught:
            send()
        message = json.loads(caught.value.body)["message"]
        assert caught.value.status == 409
        assert "'chain'" in message
        assert "version '1'" in message
        assert "step4" in message
        assert "policies" in message


def test_invalid_schema_is_422_naming_fault(wire):
    workflow = load_workflow("diamond_and_join")
    workflow["steps"]["step3"]["predecessors"] = ["step1", "step2", "ghost"]
    with pytest.raises(BrokerHTTPError) as caught:
        wire.register_worker([workflow])
    message = json.loads(caught.value.body)["message"]
    assert caught.value.status == 422
    assert "math-diamond" in message
    assert "ghost" in message


@pytest.mark.parametrize(
    "body, content_type, status, fragment",
    [
        (b"{not json", "application/json", 400, "invalid JSON"),
        (b'{"name": 5}', "application/json", 422, "name"),
        (b"[]", "application/json", 422, "body"),
        (b"null", "application/json", 422, "body"),
        (b"", "application/json", 422, "name"),
        (b"name=x", "application/x-www-form-urlencoded", 415, "Content-Type"),
        (
            b'{"name": "r", "url": "u", "workflows": [], "colour": "red"}',
            "application/json",
            422,
            "colour",
        ),
        (
            b'{"name": "r", "url": "u", "workflows": ["no-colon"]}',
            "application/json",
            422,
            "no-colon",
        ),
    ],
)
def test_bad_body_gets_json_4xx(broker, wire, body, content_type, status, fragment):
    wire.register_repository(REPOSITORY)
    code, headers, reply = raw_request(
        broker.url,
        "POST",
        "/repository/register",
        body,
        {"Content-Type": content_type},
    )
    assert code == status
    assert headers["Content-Type"] == "application/json"
    error = json.loads(reply)
    assert error["code"] == status
    assert fragment in json.dumps(error)
    assert wire.list_repositories(1) == [
        {**REPOSITORY, "credentials": {"username": "********", "token": "********"}}
    ]


def test_oversized_body_is_413(start_broker):
    server = start_broker(env={"FUSELINE_BROKER_MAX_CONTENT_LENGTH": "1000"})
    body = json.dumps({**REPOSITORY, "url": "x" * 2000}).encode()
    status, headers, reply = raw_request(
        server.url,
        "POST",
        "/repository/register",
        body,
        {"Content-Type": "application/json"},
    )
    assert status == 413
    assert headers["Content-Type"] == "application/json"
    assert json.loads(reply)["code"] == 413
    assert ProtocolClient(server.url).list_repositories(1) == []


def test_unknown_path_is_json_404(broker):
    status, headers, body = raw_request(broker.url, "GET", "/no/such/path")
    assert status == 404
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body)["code"] == 404


def test_openapi_and_swagger_ui_served_locally(broker):
    status, _, body = raw_request(broker.url, "GET", "/openapi.json")
    spec = json.loads(body)
    assert status == 200
    assert {tag["name"] for tag in spec["tags"]} == {
        "repository",
        "worker",
        "workflow",
        "system",
    }
    status, _, page = raw_request(broker.url, "GET", "/docs")
    assert status == 200
    assert b"/docs/assets/swagger-ui-bundle.js" in page
    assert b"//cdn" not in page
    status, _, script = raw_request(
        broker.url, "GET", "/docs/assets/swagger-ui-bundle.js"
    )
    assert status == 200
    assert len(script) > 100_000
