"""Fixtures shared by the unit and end-to-end tests."""

import json
import os
from pathlib import Path

import pytest

from fuseline_broker import create_app

REPO_ROOT = Path(__file__).resolve().parents[1]
# Real workflow schemas produced by fuseline lie in the shared folder beside
# the repository; FUSELINE_FIXTURES points elsewhere if needed.
FIXTURES = Path(
    os.environ.get(
        "FUSELINE_FIXTURES", REPO_ROOT.parent / "shared" / "fixtures" / "workflows"
    )
)
FIXTURE_NAMES = (
    "diamond_and_join",
    "conditional_skip",
    "or_join",
    "branching_actions",
    "policies_retry_timeout",
    "chain_five",
)


def load_workflow(name):
    """Return a fuseline workflow schema from the fixtures folder."""
    path = FIXTURES / f"{name}.json"
    if not path.exists():
        raise FileNotFoundError(
            f"workflow fixture {path} is missing; set FUSELINE_FIXTURES to the "
            "folder holding the fuseline workflow schemas"
        )
    return json.loads(path.read_text())


@pytest.fixture
def workflows():
    """Map each fixture name to its workflow schema."""
    return {name: load_workflow(name) for name in FIXTURE_NAMES}


@pytest.fixture
def app(tmp_path):
    """A broker app on a fresh SQLite file."""
    return create_app(
        {"TESTING": True, "FUSELINE_BROKER_DATABASE": str(tmp_path / "broker.db")}
    )


@pytest.fixture
def client(app):
    return app.test_client()
