"""Bearer tokens, the token path prefix, and secrets kept out of logs and files."""

import json
import sqlite3

import pytest

from ..conftest import load_workflow
from .harness import BrokerHTTPError, ProtocolClient, run_worker
from .test_wire_contract import raw_request

ADMIN_TOKEN = "admin-token-9f8e7d6c5b4a"
WORKER_TOKEN = "worker-token-1a2b3c4d5e6f"
SECRET_KEY = "wVqX1oH8m0G7l4X3pYtqzY5b0oRz9Q2n0b3kC1dE4fA="
CREDENTIAL = "ghp-credential-value-7q7q7q"
AUTH_ENV = {
    "FUSELINE_BROKER_ADMIN_TOKENS": f"spare-admin-token,{ADMIN_TOKEN}",
    "FUSELINE_BROKER_WORKER_TOKENS": WORKER_TOKEN,
    "FUSELINE_BROKER_SECRET_KEY": SECRET_KEY,
}
REPOSITORY = {
    "name": "lab",
    "url": "https://git.example.org/lab.git",
    "workflows": ["lab.flows:diamond"],
    "credentials": {"username": "ci", "token": CREDENTIAL},
}


@pytest.fixture
def secured(start_broker):
    return start_broker(env=AUTH_ENV, args=["--access-logfile", "-"])


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def test_missing_token_is_401(secured):
    status, headers, body = raw_request(
        secured.url, "GET", "/workflow/step?worker_id=w"
    )
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert json.loads(body)["code"] == 401


def test_wrong_token_is_401(secured):
    status, headers, _ = raw_request(
        secured.url, "GET", "/workers", headers=bearer("guess")
    )
    assert status == 401
    assert "invalid_token" in headers["WWW-Authenticate"]


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/workers"),
        ("GET", "/workflows"),
        ("GET", "/workflow/instances"),
        ("GET", "/repository?page=1"),
        ("POST", "/repository/register"),
    ],
)
def test_worker_token_on_admin_route_is_403(secured, method, path):
    status, _, body = raw_request(
        secured.url,
        method,
        path,
        json.dumps(REPOSITORY).encode() if method == "POST" else b"",
        {**bearer(WORKER_TOKEN), "Content-Type": "application/json"},
    )
    assert status == 403
    assert "admin" in json.loads(body)["message"]


def test_status_needs_no_token(secured):
    assert raw_request(secured.url, "GET", "/status")[0] == 200


def test_admin_token_reaches_everything(secured):
    headers = {**bearer(ADMIN_TOKEN), "Content-Type": "application/json"}
    body = json.dumps(REPOSITORY).encode()
    assert (
        raw_request(secured.url, "POST", "/repository/register", body, headers)[0]
        == 204
    )
    status, _, listing = raw_request(
        secured.url, "GET", "/repository?page=1", headers=headers
    )
    assert status == 200
    assert CREDENTIAL not in listing.decode()


def test_wire_contract_through_token_prefix(secured):
    """An unmodified fuseline worker with BROKER_URL=http://host/t/TOKEN."""
    admin = ProtocolClient(f"{secured.url}/t/{ADMIN_TOKEN}")
    admin.register_repository(REPOSITORY)
    worker = ProtocolClient(f"{secured.url}/t/{WORKER_TOKEN}")
    assert worker.get_repository("lab") == REPOSITORY
    with pytest.raises(BrokerHTTPError) as caught:
        worker.list_repositories(1)
    assert caught.value.status == 403

    workflow = load_workflow("diamond_and_join")
    instance_id = worker.dispatch(workflow, {"a": 1, "b": 2})
    worker_id = worker.register_worker([workflow])
    reports = run_worker(worker, worker_id, lambda a: ("SUCCEEDED", a["step_name"]))
    assert len(reports) == 4
    assert admin.get_instance(instance_id)["state"] == "SUCCEEDED"


def test_no_secret_in_logs(secured):
    admin = ProtocolClient(f"{secured.url}/t/{ADMIN_TOKEN}")
    admin.register_repository(REPOSITORY)
    admin.register_repository(
        {**REPOSITORY, "credentials": {"token": 5}}
    ) if False else None
    worker = ProtocolClient(f"{secured.url}/t/{WORKER_TOKEN}")
    worker.get_repository("lab")
    workflow = load_workflow("chain_five")
    worker.dispatch(workflow, {})
    worker_id = worker.register_worker([workflow])
    run_worker(worker, worker_id, lambda a: ("SUCCEEDED", None))
    raw_request(secured.url, "GET", "/workers", headers=bearer(ADMIN_TOKEN))
    raw_request(secured.url, "GET", "/workers", headers=bearer(WORKER_TOKEN))
    bad = dict(REPOSITORY, credentials={"token": [CREDENTIAL]})
    with pytest.raises(BrokerHTTPError) as caught:
        admin.register_repository(bad)
    assert CREDENTIAL not in caught.value.body.decode()
    secured.stop()

    log = secured.log()
    assert "/t/***/worker/keep-alive" in log
    for secret in (ADMIN_TOKEN, WORKER_TOKEN, SECRET_KEY, CREDENTIAL):
        assert secret not in log


def test_credentials_encrypted_in_file(secured):
    admin = ProtocolClient(f"{secured.url}/t/{ADMIN_TOKEN}")
    admin.register_repository(REPOSITORY)
    assert admin.get_repository("lab")["credentials"]["token"] == CREDENTIAL
    secured.stop()

    for path in secured.database.parent.glob(secured.database.name + "*"):
        assert CREDENTIAL.encode() not in path.read_bytes(), path
    with sqlite3.connect(secured.database) as conn:
        stored = conn.execute("select credentials from repositories").fetchone()[0]
    assert stored.startswith("fernet:")


def test_plain_database_encrypted_on_start(start_broker, tmp_path):
    database = tmp_path / "plain.db"
    plain = start_broker(database)
    ProtocolClient(plain.url).register_repository(REPOSITORY)
    plain.stop()
    assert any(
        CREDENTIAL.encode() in path.read_bytes() for path in tmp_path.glob("plain.db*")
    )

    secured = start_broker(database, env=AUTH_ENV)
    admin = ProtocolClient(f"{secured.url}/t/{ADMIN_TOKEN}")
    assert admin.get_repository("lab") == REPOSITORY
    secured.stop()

    for path in tmp_path.glob("plain.db*"):
        assert CREDENTIAL.encode() not in path.read_bytes(), path


def test_open_broker_warns_at_start(broker):
    assert "open to every client" in broker.log()


def test_secured_broker_does_not_warn(secured):
    assert "open to every client" not in secured.log()
