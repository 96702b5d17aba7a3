"""Protocol workers that run in their own processes, for load and crash tests."""

import http.client
import time
import urllib.error
import urllib.request

from .harness import BrokerHTTPError, ProtocolClient


def diamond_result(assignment):
    """Compute the diamond fixture's step results from the step's payload."""
    inputs = assignment["payload"]["workflow_inputs"]
    results = assignment["payload"]["results"]
    name = assignment["step_name"]
    if name == "step0":
        return inputs["a"] + inputs["b"]
    if name == "step1":
        return results["step0"] * 2
    if name == "step2":
        return results["step0"] * 3
    return results["step1"] + results["step2"]


def count_running(base_url):
    """Return how many instances are still running, from the listing's total."""
    with urllib.request.urlopen(
        f"{base_url}/workflow/instances?state=RUNNING&page_size=1", timeout=30
    ) as reply:
        return int(reply.headers["X-Total-Count"])


def diamond_worker(base_url, workflow, out, retry_connection=False, deadline=240.0):
    """Run diamond steps until no instance is left running.

    Puts one dict into the ``out`` queue: the ``(instance_id, step_name)``
    of every report the broker applied, the replies it did not apply, and
    every HTTP error seen. With ``retry_connection`` a refused or broken
    connection (a broker being restarted) is retried instead of fatal.
    """
    client = ProtocolClient(base_url)
    applied, stale, errors = [], [], []
    end = time.monotonic() + deadline

    def attempt(call, *args):
        while True:
            try:
                return call(*args)
            except BrokerHTTPError:
                raise
            except (OSError, http.client.HTTPException):
                if not retry_connection or time.monotonic() > end:
                    raise
                time.sleep(0.2)

    try:
        worker_id = attempt(client.register_worker, [workflow])
        while time.monotonic() < end:
            attempt(client.keep_alive, worker_id)
            status, assignment = attempt(client.get_step, worker_id)
            if status == 204:
                if attempt(count_running, base_url) == 0:
                    break
                time.sleep(0.05)
                continue
            result = diamond_result(assignment)
            reply = attempt(
                client.report_step, worker_id, assignment, "SUCCEEDED", result
            )
            key = (assignment["instance_id"], assignment["step_name"])
            if reply["applied"]:
                applied.append(key)
            else:
                stale.append((key, reply["reason"]))
    except BrokerHTTPError as exc:
        errors.append((exc.status, exc.body.decode(errors="replace")))
    except Exception as exc:  # noqa: BLE001 - reported to the test process
        errors.append((None, repr(exc)))
    out.put({"applied": applied, "stale": stale, "errors": errors})
