"""The HTTP layer through Flask's test client: configuration, parsing, listings."""

import json
import sqlite3

import pytest

from fuseline_broker import create_app

from .conftest import load_workflow


def test_config_layers(tmp_path, monkeypatch):
    instance = tmp_path / "instance"
    instance.mkdir()
    (instance / "config.py").write_text(
        "FUSELINE_BROKER_WORKER_TTL = 11\nFUSELINE_BROKER_STEP_TIMEOUT = 12\n"
        "FUSELINE_BROKER_STEP_GRACE = 13\n"
    )
    monkeypatch.setenv("FUSELINE_BROKER_STEP_TIMEOUT", "22")
    monkeypatch.setenv("FUSELINE_BROKER_STEP_GRACE", "23")
    monkeypatch.setenv("FUSELINE_BROKER_DATABASE", str(tmp_path / "env.db"))
    app = create_app({"FUSELINE_BROKER_STEP_GRACE": 33}, instance_path=str(instance))
    settings = app.extensions["fuseline_broker"].settings
    assert settings.worker_ttl == 11
    assert settings.step_timeout == 22
    assert settings.step_grace == 33
    assert (tmp_path / "env.db").exists()


def test_database_defaults_into_instance_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("FUSELINE_BROKER_DATABASE", raising=False)
    app = create_app(instance_path=str(tmp_path / "inst"))
    assert (tmp_path / "inst" / "fuseline-broker.sqlite3").exists()
    assert app.extensions["fuseline_broker"].storage.path.startswith(str(tmp_path))


@pytest.mark.parametrize(
    "key, value, fragment",
    [
        ("FUSELINE_BROKER_WORKER_TTL", "soon", "must be float"),
        ("FUSELINE_BROKER_MAX_ATTEMPTS", "0", "at least 1"),
        ("FUSELINE_BROKER_SQLITE_SYNCHRONOUS", "SOMETIMES", "must be one of"),
    ],
)
def test_bad_setting_named_at_start(tmp_path, monkeypatch, key, value, fragment):
    monkeypatch.setenv(key, value)
    with pytest.raises(ValueError, match=fragment) as caught:
        create_app({"FUSELINE_BROKER_DATABASE": str(tmp_path / "b.db")})
    assert key in str(caught.value)


def test_init_db_command(app):
    result = app.test_cli_runner().invoke(args=["broker", "init-db"])
    assert result.exit_code == 0
    assert "broker.db" in result.output


def test_duplicate_step_key_rejected(client):
    text = json.dumps([load_workflow("chain_five")])
    # Two objects for step0: json.loads alone would keep only the last one.
    duplicated = text.replace('"step0": {', '"step0": {}, "step0": {', 1)
    reply = client.post(
        "/worker/register", data=duplicated, content_type="application/json"
    )
    assert reply.status_code == 400
    assert "duplicate key" in reply.get_json()["message"]
    assert "step0" in reply.get_json()["message"]


def test_non_ascii_and_markup_names_round_trip(client):
    record = {
        "name": "réseau'; drop table repositories; --<b>",
        "url": "https://example.org/ünï.git",
        "workflows": ["paquet.modèle:flux"],
        "credentials": {"clé": "valeur"},
    }
    assert client.post("/repository/register", json=record).status_code == 204
    reply = client.get("/repository", query_string={"name": record["name"]})
    assert reply.get_json() == record


def test_instance_listing_filters_and_pages(client):
    workflow = load_workflow("chain_five")
    ids = [
        client.post("/workflow/dispatch", json={"workflow": workflow}).get_json()
        for _ in range(3)
    ]
    other = load_workflow("diamond_and_join")
    client.post("/workflow/dispatch", json={"workflow": other, "inputs": {"a": 1}})

    page = client.get("/workflow/instances?workflow_id=chain&page_size=2")
    assert page.headers["X-Total-Count"] == "3"
    assert [i["instance_id"] for i in page.get_json()] == ids[::-1][:2]
    assert client.get("/workflow/instances?state=SUCCEEDED").get_json() == []
    assert len(client.get("/workflow/instances?state=RUNNING").get_json()) == 4
    bad = client.get("/workflow/instances?state=LOST")
    assert bad.status_code == 422
    assert "LOST" in bad.get_json()["message"]


def test_unknown_instance_is_404(client):
    reply = client.get("/workflow/instances/nope")
    assert reply.status_code == 404
    assert "nope" in reply.get_json()["message"]


def test_step_needs_worker_id(client):
    reply = client.get("/workflow/step")
    assert reply.status_code == 422
    assert "worker_id" in reply.get_json()["message"]


@pytest.mark.parametrize(
    "query",
    [
        "worker_id=w1",
        "worker_id=w1&other=x",
        "worker_id=",
        "worker_id=" + "w" * 255,
        "worker_id=" + "w" * 256,
        "worker_id=w1&worker_id=w2",
        "other=x",
        "",
    ],
)
def test_worker_id_quick_path_matches_full_parse(app, query):
    """The shortcut for the worker_id query agrees with webargs and marshmallow."""
    from webargs.flaskparser import FlaskParser

    from fuseline_broker.api.common import BrokerParser
    from fuseline_broker.api.schemas import WorkerIdQuerySchema

    def outcome(parse):
        try:
            return "loaded", parse()
        except Exception as exc:  # noqa: BLE001 - both must fail alike
            return "failed", type(exc), getattr(exc, "data", None)

    schema, parser = WorkerIdQuerySchema(), BrokerParser()
    with app.test_request_context(f"/workflow/step?{query}"):
        quick = outcome(lambda: parser.parse(schema, location="query"))
        # The stock parse of BrokerParser's parent, skipping quick_load.
        full = outcome(lambda: FlaskParser.parse(parser, schema, location="query"))
    assert quick == full


def test_bad_policy_config_names_value(client):
    workflow = load_workflow("policies_retry_timeout")
    workflow["steps"]["step0"]["policies"][1]["config"]["seconds"] = "soon"
    reply = client.post("/worker/register", json=[workflow])
    assert reply.status_code == 422
    assert '"soon"' in reply.get_json()["message"]


def test_rejected_dispatch_stores_nothing(client):
    workflow = load_workflow("chain_five")
    workflow["steps"]["step4"]["successors"] = {"default": ["step0"]}
    workflow["steps"]["step0"]["predecessors"] = ["step4"]
    reply = client.post("/workflow/dispatch", json={"workflow": workflow})
    assert reply.status_code == 422
    assert "cycle" in reply.get_json()["message"]
    assert client.get("/workflow/instances").get_json() == []


def test_every_operation_documents_its_errors(client):
    spec = client.get("/openapi.json").get_json()
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if method == "parameters":
                continue
            codes = set(operation["responses"])
            assert any(code.startswith("2") for code in codes), (method, path)
            if method == "post" and "requestBody" in operation:
                assert {"400", "413", "415", "422"} <= codes, (method, path)
            if "worker_id" in json.dumps(operation.get("parameters", [])):
                assert "404" in codes, (method, path)


def test_purge_command_deletes_finished(app, client):
    workflow = load_workflow("conditional_skip")
    instance_id = client.post("/workflow/dispatch", json={"workflow": workflow})
    instance_id = instance_id.get_json()
    worker_id = client.post("/worker/register", json=[workflow]).get_json()
    while (
        step := client.get(f"/workflow/step?worker_id={worker_id}")
    ).status_code == 200:
        body = step.get_json()
        client.post(
            f"/workflow/step?worker_id={worker_id}",
            json={
                **{k: body[k] for k in ("workflow_id", "instance_id", "step_name")},
                "state": "SUCCEEDED",
                "result": None,
            },
        )
    running = client.post("/workflow/dispatch", json={"workflow": workflow}).get_json()
    runner = app.test_cli_runner()

    kept = runner.invoke(args=["broker", "purge"])
    assert "purged 0" in kept.output
    purged = runner.invoke(args=["broker", "purge", "--older-than", "0"])
    assert "purged 1" in purged.output
    assert client.get(f"/workflow/instances/{instance_id}").status_code == 404
    assert client.get(f"/workflow/instances/{running}").status_code == 200
    # The worker that ran the steps is live, so even --older-than 0 keeps it.
    assert "purged 0 workers" in purged.output


def test_purge_command_deletes_stopped_workers(app, client, tmp_path):
    workflow = load_workflow("conditional_skip")
    stopped = client.post("/worker/register", json=[workflow]).get_json()
    live = client.post("/worker/register", json=[workflow]).get_json()
    with sqlite3.connect(tmp_path / "broker.db") as conn:
        conn.execute(
            "update workers set last_seen = last_seen - 8 * 86400 where worker_id = ?",
            (stopped,),
        )
    conn.close()

    output = app.test_cli_runner().invoke(args=["broker", "purge"]).output

    assert "purged 1 worker last seen" in output
    storage = app.extensions["fuseline_broker"].storage
    listed = storage.list_workers(live_only=False)
    assert [worker["worker_id"] for worker in listed] == [live]
    rejected = client.post(f"/worker/keep-alive?worker_id={stopped}")
    assert rejected.status_code == 404
    assert stopped in rejected.get_json()["message"]


def test_settings_command_masks_secrets(tmp_path):
    app = create_app(
        {
            "FUSELINE_BROKER_DATABASE": str(tmp_path / "b.db"),
            "FUSELINE_BROKER_ADMIN_TOKENS": "very-secret-token",
        }
    )
    output = app.test_cli_runner().invoke(args=["broker", "settings"]).output
    assert "FUSELINE_BROKER_ADMIN_TOKENS" in output
    assert "very-secret-token" not in output


def test_short_token_rejected(tmp_path):
    with pytest.raises(ValueError, match="at least 16 characters"):
        create_app(
            {
                "FUSELINE_BROKER_DATABASE": str(tmp_path / "b.db"),
                "FUSELINE_BROKER_WORKER_TOKENS": "abc",
            }
        )


def test_settings_command_shows_database_in_use(app):
    output = app.test_cli_runner().invoke(args=["broker", "settings"]).output
    assert "FUSELINE_BROKER_DATABASE = " in output
    assert "broker.db" in output
