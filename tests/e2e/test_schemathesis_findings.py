"""Regression tests for request-handling faults, sent as raw HTTP to gunicorn."""

import json

import pytest

from .harness import BrokerServer
from .test_wire_contract import raw_request

JSON_HEADERS = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    """Start one gunicorn broker for the module, so each test uses its own names."""
    server = BrokerServer(tmp_path_factory.mktemp("findings") / "broker.db")
    server.start()
    yield server
    server.stop()


def send_json(broker, method, path, text):
    """Send ``text`` as a JSON body and return status, headers and parsed reply."""
    status, headers, body = raw_request(
        broker.url, method, path, text.encode(), JSON_HEADERS
    )
    return status, headers, json.loads(body) if body else None


@pytest.mark.parametrize(
    "path, page",
    [
        ("/repository", "1392461795255404032"),
        ("/workflow/instances", "14273241388410252296192"),
    ],
)
def test_page_overflow_is_422(broker, path, page):
    # (page - 1) * page_size overflows SQLite's 64-bit OFFSET.
    status, headers, body = raw_request(broker.url, "GET", f"{path}?page={page}")
    reply = json.loads(body)
    assert status == 422
    assert headers["Content-Type"] == "application/json"
    assert reply["code"] == 422
    assert "page" in reply["message"]
    assert page in reply["message"]


@pytest.mark.parametrize(
    "method, path, allowed",
    [
        ("TRACE", "/status", {"GET"}),
        ("TRACE", "/workflow/step", {"GET", "POST"}),
        ("DELETE", "/repository/register", {"POST"}),
    ],
)
def test_method_not_allowed_has_allow(broker, method, path, allowed):
    # RFC 9110, section 15.5.6: a 405 response must carry an Allow header.
    status, headers, body = raw_request(broker.url, method, path)
    assert status == 405
    assert headers["Content-Type"] == "application/json"
    assert "Allow" in headers
    listed = {name.strip() for name in headers["Allow"].split(",")}
    assert allowed <= listed


def test_lone_surrogate_is_4xx(broker):
    # json.loads turns the escape into a str that sqlite3 cannot encode as UTF-8.
    text = '{"name": "\\ud800", "url": "u", "workflows": []}'
    status, headers, reply = send_json(broker, "POST", "/repository/register", text)
    assert status in (400, 422)
    assert headers["Content-Type"] == "application/json"
    assert reply["code"] == status
    assert "surrogate" in reply["message"]


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_number_is_400(broker, token):
    # Python's json module accepts these tokens, and the broker then sends them
    # back unquoted, which is not JSON.
    workflow_id = f"non-finite-{token}"
    workflow = {"workflow_id": workflow_id, "version": "1", "steps": {}}
    workflow["steps"]["a"] = {"name": "a"}
    text = f'{{"workflow": {json.dumps(workflow)}, "inputs": {{"x": {token}}}}}'
    status, headers, reply = send_json(broker, "POST", "/workflow/dispatch", text)
    assert status == 400
    assert headers["Content-Type"] == "application/json"
    assert reply["code"] == 400
    assert token in reply["message"]

    status, _, body = raw_request(
        broker.url, "GET", f"/workflow/instances?workflow_id={workflow_id}"
    )
    assert status == 200
    assert json.loads(body) == []


@pytest.mark.parametrize(
    "name, config",
    [
        # float(seconds) raises OverflowError when the step is handed out.
        ("huge-int", [{"name": "timeout", "config": {"seconds": 10**400}}]),
        # 10 tries of 1e308 seconds overflow to an infinite deadline.
        (
            "infinite",
            [
                {"name": "timeout", "config": {"seconds": 1e308}},
                {"name": "retry", "config": {"max_retries": 10}},
            ],
        ),
    ],
)
def test_unbounded_step_budget_is_422(broker, name, config):
    workflow = {"workflow_id": f"budget-{name}", "version": "1", "steps": {}}
    workflow["steps"]["a"] = {"name": "a", "policies": config}
    text = json.dumps([workflow])
    status, headers, reply = send_json(broker, "POST", "/worker/register", text)
    assert status == 422
    assert headers["Content-Type"] == "application/json"
    assert reply["code"] == 422
    assert "seconds" in reply["message"]
