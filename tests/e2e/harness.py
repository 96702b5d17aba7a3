"""A real gunicorn broker and a worker that speaks the raw wire protocol."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port():
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class BrokerServer:
    """``gunicorn wsgi:app`` on a free loopback port and its own SQLite file."""

    def __init__(
        self,
        database,
        *,
        workers=2,
        threads=4,
        env=None,
        log_path=None,
        port=None,
        app_spec="wsgi:app",
        args=(),
    ):
        self.database = Path(database)
        self.workers = workers
        self.threads = threads
        self.env = dict(env or {})
        self.log_path = Path(log_path or self.database.with_suffix(".log"))
        self.port = port
        self.app_spec = app_spec
        self.args = list(args)
        self.process = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout=30.0):
        """Start gunicorn and wait until it serves HTTP requests."""
        self.port = self.port or free_port()
        env = {
            **os.environ,
            "FUSELINE_BROKER_DATABASE": str(self.database),
            **self.env,
        }
        command = [
            sys.executable,
            "-m",
            "gunicorn",
            self.app_spec,
            "--bind",
            f"127.0.0.1:{self.port}",
            "--workers",
            str(self.workers),
            "--threads",
            str(self.threads),
            "--worker-class",
            "gthread",
            *self.args,
        ]
        self._log = open(self.log_path, "ab")
        # A session of its own lets a test kill the master and its workers at once.
        self.process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"gunicorn exited with {self.process.returncode}:\n{self.log()}"
                )
            # Any HTTP reply, even a 404 for "/", means gunicorn is serving.
            try:
                with urllib.request.urlopen(self.url, timeout=1):
                    return self
            except urllib.error.HTTPError:
                return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"gunicorn did not answer within {timeout}s:\n{self.log()}")

    def worker_pids(self):
        """Return the pids of gunicorn's worker processes."""
        output = subprocess.run(
            ["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True
        ).stdout
        return [int(pid) for pid in output.split()]

    def kill(self):
        """SIGKILL the master and every worker, as a power cut would end them."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self._log.close()

    def stop(self):
        """Stop gunicorn gracefully."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self._log.close()

    def log(self):
        """Return everything gunicorn and the broker wrote so far."""
        return self.log_path.read_text(errors="replace")


class BrokerHTTPError(Exception):
    """A 4xx or 5xx reply; a fuseline worker dies on these."""

    def __init__(self, status, body):
        super().__init__(f"HTTP {status}: {body!r}")
        self.status = status
        self.body = body


class ProtocolClient:
    """Send requests exactly as fuseline's HTTP broker client does.

    fuseline uses ``urllib.request`` with a JSON ``Content-type`` on bodies,
    no other headers, and raises on every 4xx and 5xx reply. Each method
    returns the parsed JSON body, or None for an empty one.
    """

    def __init__(self, base_url, timeout=30.0):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def call(self, method, path, body=None, *, raw_body=None):
        """Send one request and return ``(status, parsed body or None)``."""
        headers = {}
        data = None
        if body is not None or raw_body is not None:
            headers["Content-type"] = "application/json"
            data = raw_body if raw_body is not None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base_url + path, data=data, headers=headers, method=method
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as reply:
                payload = reply.read()
                status = reply.status
        except urllib.error.HTTPError as exc:
            raise BrokerHTTPError(exc.code, exc.read()) from None
        return status, (json.loads(payload) if payload else None)

    def register_repository(self, record):
        return self.call("POST", "/repository/register", record)[1]

    def get_repository(self, name):
        return self.call("GET", f"/repository?name={name}")[1]

    def list_repositories(self, page):
        return self.call("GET", f"/repository?page={page}")[1]

    def dispatch(self, workflow, inputs):
        return self.call(
            "POST", "/workflow/dispatch", {"workflow": workflow, "inputs": inputs}
        )[1]

    def register_worker(self, workflows):
        return self.call("POST", "/worker/register", list(workflows))[1]

    def keep_alive(self, worker_id):
        return self.call(
            "POST", f"/worker/keep-alive?worker_id={worker_id}", raw_body=b""
        )

    def get_step(self, worker_id):
        return self.call("GET", f"/workflow/step?worker_id={worker_id}")

    def report_step(self, worker_id, assignment, state, result):
        report = {
            "workflow_id": assignment["workflow_id"],
            "instance_id": assignment["instance_id"],
            "step_name": assignment["step_name"],
            "state": state,
            "result": result,
        }
        return self.call("POST", f"/workflow/step?worker_id={worker_id}", report)[1]

    def list_workers(self):
        return self.call("GET", "/workers")[1]

    def get_instance(self, instance_id):
        return self.call("GET", f"/workflow/instances/{instance_id}")[1]


def run_worker(
    client, worker_id, decide, *, stop_when_idle=True, idle_wait=0.05, deadline=60.0
):
    """Loop keep-alive, take a step, report it, as fuseline's ProcessEngine does.

    ``decide(assignment)`` returns ``(state, result)`` for a step. Returns
    the list of ``(assignment, state, result, reply)`` in the order reported.
    """
    done = []
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        client.keep_alive(worker_id)
        status, assignment = client.get_step(worker_id)
        if status == 204:
            if stop_when_idle:
                return done
            time.sleep(idle_wait)
            continue
        state, result = decide(assignment)
        reply = client.report_step(worker_id, assignment, state, result)
        done.append((assignment, state, result, reply))
    raise TimeoutError(f"worker {worker_id} still busy after {deadline}s")


def wait_for(predicate, timeout=30.0, interval=0.1):
    """Poll ``predicate`` until it returns a true value, and return that value."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"condition not met within {timeout}s")
