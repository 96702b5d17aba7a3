"""Fixtures that start real gunicorn brokers on temporary SQLite files."""

import pytest

from .harness import BrokerServer, ProtocolClient


@pytest.fixture
def start_broker(tmp_path):
    """Start gunicorn brokers on demand; each is stopped after the test."""
    servers = []

    def start(database=None, **kwargs):
        server = BrokerServer(database or tmp_path / "broker.db", **kwargs)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def broker(start_broker):
    """One gunicorn broker with 2 processes of 4 threads."""
    return start_broker()


@pytest.fixture
def wire(broker):
    """A client that speaks to ``broker`` exactly as fuseline workers do."""
    return ProtocolClient(broker.url)
