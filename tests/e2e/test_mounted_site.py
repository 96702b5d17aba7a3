"""A host site with the broker under /broker, served by gunicorn."""

import urllib.request

from ..conftest import load_workflow
from .harness import ProtocolClient, run_worker


def test_host_and_broker_both_answer(start_broker):
    server = start_broker(app_spec="tests.hosts.site:app")

    with urllib.request.urlopen(server.url + "/") as reply:
        assert b"Host home page" in reply.read()
    with urllib.request.urlopen(server.url + "/pets") as reply:
        assert reply.status == 200

    # A fuseline worker pointed at BROKER_URL=http://host:port/broker.
    client = ProtocolClient(server.url + "/broker")
    assert client.call("GET", "/status") == (200, {"status": "ok"})
    workflow = load_workflow("chain_five")
    instance_id = client.dispatch(workflow, {})
    worker_id = client.register_worker([workflow])
    reports = run_worker(client, worker_id, lambda a: ("SUCCEEDED", a["step_name"]))
    assert len(reports) == 5
    assert client.get_instance(instance_id)["state"] == "SUCCEEDED"
