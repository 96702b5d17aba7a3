"""Steps whose worker vanished are taken back after their deadline."""

import time

from ..conftest import load_workflow
from .harness import ProtocolClient, run_worker, wait_for

SHORT_DEADLINE = {"FUSELINE_BROKER_STEP_TIMEOUT": "1.5"}


def chain_result(assignment):
    return "SUCCEEDED", assignment["step_name"]


def test_vanished_worker_step_goes_to_another(start_broker):
    server = start_broker(env=SHORT_DEADLINE)
    client = ProtocolClient(server.url)
    workflow = load_workflow("chain_five")
    instance_id = client.dispatch(workflow, {})
    vanished = client.register_worker([workflow])
    survivor = client.register_worker([workflow])

    taken = client.get_step(vanished)[1]
    assert taken["step_name"] == "step0"
    assert client.get_step(survivor)[0] == 204

    retaken = wait_for(lambda: client.get_step(survivor)[1], timeout=10)
    assert retaken["step_name"] == "step0"
    assert retaken["assigned_at"] >= taken["expires_at"]
    client.report_step(survivor, retaken, "SUCCEEDED", "by survivor")
    run_worker(client, survivor, chain_result)
    before = client.get_instance(instance_id)

    late = client.report_step(vanished, taken, "FAILED", None)

    assert late["applied"] is False
    assert "another worker" in late["reason"]
    after = client.get_instance(instance_id)
    assert after == before
    assert after["state"] == "SUCCEEDED"
    assert after["steps"]["step0"]["result"] == "by survivor"
    assert after["steps"]["step0"]["attempts"] == 2
    assert [a["worker_id"] for a in after["steps"]["step0"]["assignments"]] == [
        vanished,
        survivor,
    ]


def test_late_report_before_handout_is_applied(start_broker):
    server = start_broker(env=SHORT_DEADLINE)
    client = ProtocolClient(server.url)
    workflow = load_workflow("chain_five")
    instance_id = client.dispatch(workflow, {})
    slow = client.register_worker([workflow])
    # A worker of another workflow: its poll takes the expired step back into
    # the queue but cannot be handed it.
    bystander = client.register_worker([load_workflow("diamond_and_join")])

    taken = client.get_step(slow)[1]
    time.sleep(taken["expires_at"] - time.time() + 0.3)
    assert client.get_step(bystander)[0] == 204
    requeued = client.get_instance(instance_id)["steps"]["step0"]
    assert requeued["state"] == "QUEUED"
    assert requeued["worker_id"] == slow

    reply = client.report_step(slow, taken, "SUCCEEDED", "late but first")

    assert reply == {"applied": True}
    instance = client.get_instance(instance_id)
    assert instance["steps"]["step0"]["state"] == "SUCCEEDED"
    assert instance["steps"]["step0"]["result"] == "late but first"
    assert instance["steps"]["step1"]["state"] == "QUEUED"
    # The withdrawn queue entry is gone: the next handout is step1, not step0.
    assert client.get_step(slow)[1]["step_name"] == "step1"


def test_step_fails_after_max_attempts(start_broker):
    server = start_broker(env={**SHORT_DEADLINE, "FUSELINE_BROKER_MAX_ATTEMPTS": "2"})
    client = ProtocolClient(server.url)
    workflow = load_workflow("chain_five")
    instance_id = client.dispatch(workflow, {})
    worker_id = client.register_worker([workflow])

    first = client.get_step(worker_id)[1]
    second = wait_for(lambda: client.get_step(worker_id)[1], timeout=10)
    assert second["step_name"] == first["step_name"] == "step0"
    time.sleep(second["expires_at"] - time.time() + 0.3)
    assert client.get_step(worker_id)[0] == 204

    instance = client.get_instance(instance_id)
    assert instance["state"] == "FAILED"
    step0 = instance["steps"]["step0"]
    assert step0["state"] == "FAILED"
    assert step0["attempts"] == 2
    assert step0["result"]["error"] == "timed out"
    assert {instance["steps"][f"step{i}"]["state"] for i in range(1, 5)} == {
        "CANCELLED"
    }
    late = client.report_step(worker_id, second, "SUCCEEDED", "too late")
    assert late["applied"] is False
    assert client.get_instance(instance_id) == instance
