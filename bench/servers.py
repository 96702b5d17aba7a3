"""gunicorn servers on loopback ports, and the memory of their worker processes."""

import logging
import os
import runpy
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
GUNICORN_CONF = REPO_ROOT / "gunicorn.conf.py"

log = logging.getLogger(__name__)

#: Units of utime and stime in /proc/PID/stat, per second.
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port():
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def gunicorn_settings():
    """Return the settings gunicorn.conf.py gives in this environment."""
    values = runpy.run_path(str(GUNICORN_CONF))
    names = ("workers", "threads", "worker_class", "keepalive")
    return {name: values.get(name) for name in names}


class GunicornServer:
    """``gunicorn APP`` run from the repository root, so gunicorn.conf.py applies.

    The command line sets only ``--bind``, to a free port on 127.0.0.1.
    Every other setting comes from gunicorn.conf.py.
    """

    def __init__(self, app_spec, log_path, env=None):
        self.app_spec = app_spec
        self.log_path = Path(log_path)
        self.env = dict(env or {})
        self.port = None
        self.process = None
        self._log_file = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self, expected_workers, timeout=30.0):
        """Start gunicorn and wait until its workers run and it responds to HTTP."""
        self.port = free_port()
        command = [
            sys.executable,
            "-m",
            "gunicorn",
            self.app_spec,
            "--bind",
            f"127.0.0.1:{self.port}",
        ]
        self._log_file = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env={**os.environ, **self.env},
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"gunicorn {self.app_spec} exited with "
                    f"{self.process.returncode}; see {self.log_path}"
                )
            if len(self.worker_pids()) >= expected_workers and self._responds():
                log.info("gunicorn %s serves %s", self.app_spec, self.url)
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(
            f"gunicorn {self.app_spec} did not respond within {timeout}s; "
            f"see {self.log_path}"
        )

    def _responds(self):
        # Any HTTP reply, a 404 included, means a worker is serving.
        try:
            with urllib.request.urlopen(self.url + "/", timeout=1):
                return True
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False

    def worker_pids(self):
        """Return the pids of the processes whose parent is the gunicorn master."""
        if self.process is None:
            return []
        return child_pids(self.process.pid)

    def cpu_seconds(self):
        """Return the CPU seconds (user plus system) of the master and its workers."""
        pids = [self.process.pid, *self.worker_pids()]
        return sum(process_cpu_seconds(pid) for pid in pids)

    def stop(self):
        """Stop gunicorn with SIGTERM, or SIGKILL its process group after 15 s."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                log.warning("gunicorn %s ignored SIGTERM; killing it", self.app_spec)
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


def _stat_fields(pid):
    """Return the fields of /proc/PID/stat after the command name, or None."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def process_cpu_seconds(pid):
    """Return the user plus system CPU seconds of a process, 0.0 once it is gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    # The list starts at field 3 (state), so utime (14) and stime (15) are 11, 12.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def child_pids(parent_pid):
    """Return the pids whose parent is ``parent_pid``, read from /proc."""
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(entry)
        # After the command name come state, then ppid.
        if fields is not None and int(fields[1]) == parent_pid:
            children.append(int(entry))
    return sorted(children)


def memory_kib(pid):
    """Return ``(VmRSS, VmHWM)`` of a process in KiB, or None if it is gone."""
    values = {}
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    values[key] = int(rest.split()[0])
    except OSError:
        return None
    if len(values) != 2:
        return None
    return values["VmRSS"], values["VmHWM"]


class MemorySampler:
    """Sample VmRSS and VmHWM of a gunicorn master's children in a thread."""

    def __init__(self, server, interval=0.25):
        self.server = server
        self.interval = interval
        self.peaks = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        """Start sampling."""
        self._thread.start()
        return self

    def stop(self):
        """Take a last sample and stop. Call it before stopping the server."""
        self._stop.set()
        self._thread.join(timeout=5)
        self.sample()

    def _run(self):
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self):
        """Record the current memory of each worker process."""
        for pid in self.server.worker_pids():
            reading = memory_kib(pid)
            if reading is None:
                continue
            rss, hwm = reading
            peak_rss, peak_hwm = self.peaks.get(pid, (0, 0))
            self.peaks[pid] = (max(peak_rss, rss), max(peak_hwm, hwm))

    def peak_mb(self):
        """Return, per worker pid, the largest sampled VmRSS and the final VmHWM."""
        return {
            str(pid): {
                "max_sampled_vm_rss_mb": round(rss / 1024, 1),
                "vm_hwm_mb": round(hwm / 1024, 1),
            }
            for pid, (rss, hwm) in sorted(self.peaks.items())
        }
