"""A full disk under the database: 503 with a JSON error, then recovery."""

import json
import os
import subprocess

import pytest

from .harness import BrokerServer, ProtocolClient
from .test_wire_contract import raw_request

REPOSITORY = {"name": "keep-me", "url": "u", "workflows": ["a:b"], "credentials": {}}


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs of its own, so filling it harms nothing else."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.fail(f"mounting a tmpfs needs root: {mounted.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(directory):
    """Write a ballast file that takes every free byte of the file system."""
    ballast = directory / "ballast"
    stats = os.statvfs(directory)
    with open(ballast, "wb") as handle:
        handle.write(b"\0" * (stats.f_bavail * stats.f_frsize))
    return ballast


def register(url, name, size):
    record = {**REPOSITORY, "name": name, "credentials": {"blob": "x" * size}}
    body = json.dumps(record).encode()
    return raw_request(
        url, "POST", "/repository/register", body, {"Content-Type": "application/json"}
    )


def test_full_disk_gives_503_then_recovers(small_disk, tmp_path):
    server = BrokerServer(
        small_disk / "broker.db", log_path=tmp_path / "broker.log"
    ).start()
    try:
        client = ProtocolClient(server.url)
        client.register_repository(REPOSITORY)
        ballast = fill(small_disk)

        statuses = []
        for number in range(200):
            status, headers, body = register(server.url, f"r{number}", 20_000)
            statuses.append(status)
            if status != 204:
                break

        assert statuses[-1] == 503, body
        assert headers["Content-Type"] == "application/json"
        assert "full" in json.loads(body)["message"]
        assert "rejected POST /repository/register with 503" in server.log()
        assert client.get_repository("keep-me") == REPOSITORY

        ballast.unlink()
        status, _, _ = register(server.url, "after-recovery", 100)
        assert status == 204
        stored = client.get_repository("after-recovery")
        assert stored["credentials"] == {"blob": "x" * 100}
        assert client.get_repository("keep-me") == REPOSITORY
    finally:
        server.stop()
