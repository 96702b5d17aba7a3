"""The broker mounted under a prefix of an existing Flask site."""

import pytest

from .conftest import load_workflow
from .hosts.site import create_site


@pytest.fixture
def site(tmp_path):
    return create_site(str(tmp_path / "broker.db")).test_client()


def test_host_route_still_answers(site):
    reply = site.get("/")
    assert reply.status_code == 200
    assert b"Host home page" in reply.data


def test_host_api_still_answers(site):
    assert site.get("/pets").get_json() == [{"name": "Rex"}]


def test_broker_answers_under_prefix(site):
    assert site.get("/broker/status").get_json() == {"status": "ok"}
    assert site.get("/status").status_code == 404


def test_broker_runs_workflow_under_prefix(site):
    workflow = load_workflow("chain_five")
    instance_id = site.post("/broker/workflow/dispatch", json={"workflow": workflow})
    worker_id = site.post("/broker/worker/register", json=[workflow]).get_json()
    step = site.get(f"/broker/workflow/step?worker_id={worker_id}").get_json()
    assert step["instance_id"] == instance_id.get_json()
    assert step["step_name"] == "step0"


def test_broker_spec_lists_only_broker_paths(site):
    spec = site.get("/broker/openapi.json").get_json()
    assert spec["paths"]
    assert all(path.startswith("/broker/") for path in spec["paths"])
    assert "/broker/workflow/step" in spec["paths"]
    assert {tag["name"] for tag in spec["tags"]} == {
        "repository",
        "worker",
        "workflow",
        "system",
    }


def test_host_spec_lists_only_host_paths(site):
    spec = site.get("/openapi.json").get_json()
    assert list(spec["paths"]) == ["/pets"]


def test_swagger_ui_under_prefix(site):
    page = site.get("/broker/docs")
    assert page.status_code == 200
    assert b"/broker/docs/assets/swagger-ui-bundle.js" in page.data
    assert b"/broker/openapi.json" in page.data
    assert site.get("/broker/docs/assets/swagger-ui-bundle.js").status_code == 200


def test_errors_keep_their_owner(site):
    broker_missing = site.get("/broker/no-such-route")
    assert broker_missing.status_code == 404
    assert broker_missing.get_json()["code"] == 404
    host_missing = site.get("/no-such-page")
    assert host_missing.status_code == 404


def test_plain_host_keeps_html_errors(tmp_path):
    import flask

    from fuseline_broker import Broker

    site = flask.Flask(__name__)
    site.config["FUSELINE_BROKER_DATABASE"] = str(tmp_path / "broker.db")
    Broker(site, url_prefix="/jobs")
    client = site.test_client()

    host_missing = client.get("/missing")
    assert host_missing.status_code == 404
    assert host_missing.mimetype == "text/html"
    broker_missing = client.get("/jobs/missing")
    assert broker_missing.status_code == 404
    assert broker_missing.mimetype == "application/json"
