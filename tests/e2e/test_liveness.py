"""Worker liveness: who GET /workers lists, and what silence does not do."""

import time

from ..conftest import load_workflow
from .harness import ProtocolClient

SHORT_TTL = {"FUSELINE_BROKER_WORKER_TTL": "1"}


def listed(client):
    return [worker["worker_id"] for worker in client.list_workers()]


def test_silent_worker_leaves_and_returns(start_broker):
    client = ProtocolClient(start_broker(env=SHORT_TTL).url)
    workflow = load_workflow("chain_five")
    worker_id = client.register_worker([workflow])
    assert listed(client) == [worker_id]

    time.sleep(1.3)
    assert listed(client) == []

    assert client.keep_alive(worker_id)[0] == 204
    assert listed(client) == [worker_id]
    # Its registration survived the silence: it still gets chain steps.
    client.dispatch(workflow, {})
    assert client.get_step(worker_id)[1]["step_name"] == "step0"


def test_silence_never_takes_step_back(start_broker):
    client = ProtocolClient(start_broker(env=SHORT_TTL).url)
    workflow = load_workflow("chain_five")
    instance_id = client.dispatch(workflow, {})
    busy = client.register_worker([workflow])
    other = client.register_worker([workflow])
    taken = client.get_step(busy)[1]

    time.sleep(1.3)
    assert client.get_step(other)[0] == 204
    assert busy not in listed(client)

    step0 = client.get_instance(instance_id)["steps"]["step0"]
    assert step0["state"] == "RUNNING"
    assert step0["worker_id"] == busy
    assert client.report_step(busy, taken, "SUCCEEDED", 1) == {"applied": True}
