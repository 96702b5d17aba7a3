"""Worker liveness: who GET /workers lists, and what silence and a purge do."""

import json
import os
import subprocess
import sys
import time

import pytest

from ..conftest import load_workflow
from .harness import REPO_ROOT, BrokerHTTPError, ProtocolClient

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


def test_purge_command_spares_live_workers(start_broker):
    # Long enough that the live worker stays live while the purge command
    # starts, even on a loaded machine.
    ttl = {"FUSELINE_BROKER_WORKER_TTL": "3"}
    server = start_broker(env=ttl)
    client = ProtocolClient(server.url)
    workflow = load_workflow("chain_five")
    stopped = client.register_worker([workflow])
    live = client.register_worker([workflow])
    # Past the TTL and the 1 s for which a process may skip storing last_seen.
    time.sleep(4.2)
    assert client.keep_alive(live)[0] == 204

    purge = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", "broker", "purge"]
        + ["--older-than", "0"],
        cwd=REPO_ROOT,
        env={
            **os.environ,
            **ttl,
            "FUSELINE_BROKER_DATABASE": str(server.database),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert purge.returncode == 0, purge.stderr
    assert "purged 1 worker last seen" in purge.stdout
    with pytest.raises(BrokerHTTPError) as rejected:
        client.keep_alive(stopped)
    assert rejected.value.status == 404
    assert stopped in json.loads(rejected.value.body)["message"]
    assert client.keep_alive(live)[0] == 204
    client.dispatch(workflow, {})
    assert client.get_step(live)[1]["step_name"] == "step0"
