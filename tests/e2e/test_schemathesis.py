"""Schemathesis checks of every operation in the broker's served OpenAPI document."""

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Err
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from .harness import BrokerServer

#: Generated requests per operation and generation mode.
MAX_EXAMPLES = 30
#: Seconds one request may take before the case fails.
REQUEST_TIMEOUT = 30
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
#: Checks skipped for one operation label, each because it is wrong about it.
EXCLUDED_CHECKS = {}

# NOTE: ``schemathesis.pytest.from_fixture`` fails on pytest 9.2 because
# schemathesis 4.32.5 uses ``Node._nodeid``, which pytest 9.2 removed. So each
# operation gets its own Hypothesis test, built from ``APIOperation.as_strategy``,
# and the examples and coverage phases of schemathesis do not run here.


@pytest.fixture(scope="module")
def served_schema(tmp_path_factory):
    """Load ``/openapi.json`` from a gunicorn broker on a fresh SQLite file."""
    server = BrokerServer(tmp_path_factory.mktemp("schemathesis") / "broker.db")
    server.start()
    try:
        yield schemathesis.openapi.from_url(
            f"{server.url}/openapi.json", timeout=REQUEST_TIMEOUT
        )
    finally:
        server.stop()


def check_operation(operation, mode):
    """Send generated requests for one operation and validate every response."""
    excluded = EXCLUDED_CHECKS.get(operation.label, [])

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def send(case):
        case.call_and_validate(
            checks=CHECKS, excluded_checks=excluded, timeout=REQUEST_TIMEOUT
        )

    send()


@pytest.mark.slow
def test_operations_conform(served_schema, subtests):
    labels = []
    for result in served_schema.get_all_operations():
        if isinstance(result, Err):
            pytest.fail(f"invalid operation in /openapi.json: {result.err()}")
        operation = result.ok()
        labels.append(operation.label)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            with subtests.test(msg=f"{operation.label} {mode.value}"):
                try:
                    check_operation(operation, mode)
                except Unsatisfiable:
                    # An operation without parameters, or with one
                    # unconstrained string, has no invalid input to generate.
                    if mode is GenerationMode.POSITIVE:
                        raise
                    pytest.skip(f"{operation.label} has no input to make invalid")
    assert "GET /status" in labels
    assert len(labels) == 12
