"""The broker's purge command, run by the benchmark beside a measured cycle.

``flask --app wsgi broker purge --older-than 0`` deletes every instance that
finished before the command started, in small transactions
(``COMMAND_BATCH`` in ``fuseline_broker/retention.py``), and sleeps between
them so that it spends at most ``--share`` of its time deleting. After each
commit it logs one line with a millisecond timestamp. On the copy the
benchmark runs it with ``--share 1``, which leaves only the shortest pause
(``COMMAND_PAUSE``) between commits, so a gap there is one transaction, plus
that pause.
"""

import datetime
import logging
import os
import re
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import cycle
from clients import percentile
from servers import REPO_ROOT

log = logging.getLogger(__name__)

COMMAND = ("flask", "--app", "wsgi", "broker", "purge", "--older-than", "0")
#: The line SQLiteStorage.purge_finished logs after each committed transaction.
COMMIT_LINE = re.compile(
    r"^(?P<logged_at>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*"
    r"purged (?P<count>\d+) instances finished before"
)
#: The line the purge command prints on stdout when it is done.
TOTAL_LINE = re.compile(r"^purged (?P<count>\d+) finished instances?$", re.MULTILINE)
#: Seconds between two reads of the log while waiting for the first commit.
POLL_INTERVAL = 0.02


def measure_purge_round(server, workflow, args, work_dir):
    """Measure a cycle without, then with, the purge command deleting the history.

    The purge starts after the second cycle's dispatch phase, and that
    cycle's step phase starts once the purge has committed its first
    transaction. The purge's cutoff time therefore comes before any run of
    the cycle finishes, and the purge is busy from the start of the step
    phase. The two cycles are compared over the span of the step phase in
    which the purge committed, and over whole cycles. A copy of the database,
    taken between the cycles, is purged last with no load, which gives how
    long each transaction holds the write lock when it does not wait for it.
    """
    log.info("purge round: a cycle without the purge")
    without = cycle.measure_cycle(server.target, workflow, args, server.cpu_clock)
    copy_path = work_dir / "purge-copy.db"
    copy_database(server.database, copy_path)

    log.info("purge round: a cycle while the purge runs")
    running = PurgeRun(server.database, work_dir / "purge.log")

    def start_purge():
        running.start()
        running.wait_for_first_commit(args.timeout)

    try:
        during = cycle.measure_cycle(
            server.target, workflow, args, server.cpu_clock, before_steps=start_purge
        )
        running.wait(args.timeout)
    finally:
        running.stop()

    log.info("purge round: the same purge on a copy, with no load")
    # With --share 1 only the shortest pause follows each commit, so the gaps
    # between commits are the transactions' own times plus that pause.
    idle = PurgeRun(copy_path, work_dir / "purge-copy.log", share=1).start()
    try:
        idle.wait(args.timeout)
    finally:
        idle.stop()

    return {
        "purge": running.summary(),
        "purge_of_copy_without_load": idle.summary(),
        "while_deleting": compare_while_deleting(without, during, running),
        "whole_cycle_ratios": cycle.ratios(
            cycle.cycle_rates(without), cycle.cycle_rates(during)
        ),
        "without_purge": cycle.summarize_cycles([without]),
        "with_purge": cycle.summarize_cycles([during]),
    }


def compare_while_deleting(without, during, purge_run):
    """Compare the step rate and latencies of the two cycles while the purge ran.

    The span runs from the later of the step phase's start and the first
    commit to the earlier of the last report and the last commit. The same
    span, counted from the start of the step phase and cut at its end, is
    taken from the cycle without the purge, so both cover the same part of
    the workload.
    """
    commits = [at for at, _ in purge_run.commit_times()]
    during_end = during.step_started_at + during.step_seconds
    if not commits:
        return None
    start = max(during.step_started_at, commits[0])
    end = min(during_end, commits[-1])
    if end <= start:
        return {"step_phase_share": 0.0}
    offset = start - during.step_started_at
    reference_start = without.step_started_at + offset
    reference_end = min(
        reference_start + (end - start),
        without.step_started_at + without.step_seconds,
    )
    # An empty span, if the other step phase ended before the offset, gives None.
    reference_end = max(reference_end, reference_start)
    with_purge = cycle.window_rates(during, start, end)
    without_purge = cycle.window_rates(without, reference_start, reference_end)
    compared = [key for key in with_purge if key != "seconds"]
    return {
        "step_phase_share": round((end - start) / during.step_seconds, 3),
        "offset_into_step_phase_seconds": round(offset, 2),
        "with_purge": with_purge,
        "without_purge": without_purge,
        "ratios": cycle.ratios(
            {key: without_purge[key] for key in compared},
            {key: with_purge[key] for key in compared},
        ),
    }


def copy_database(source, destination):
    """Copy a SQLite file, its WAL content included, with SQLite's backup API."""
    origin = sqlite3.connect(source)
    copy = sqlite3.connect(destination)
    try:
        origin.backup(copy)
    finally:
        copy.close()
        origin.close()


class PurgeRun:
    """One run of the purge command from the repository root on a SQLite file."""

    def __init__(self, database, log_path, share=None):
        self.database = Path(database)
        self.log_path = Path(log_path)
        self.arguments = [*COMMAND] + ([] if share is None else ["--share", str(share)])
        self.out_path = self.log_path.with_suffix(".out")
        self.process = None
        self.started_at = None
        self.ended_at = None
        self._reaper = None

    @property
    def command(self):
        """Return the command line, as run from the repository root."""
        return f"FUSELINE_BROKER_DATABASE={self.database} {' '.join(self.arguments)}"

    def start(self):
        """Start the command, with stdout and stderr going to files."""
        env = {**os.environ, "FUSELINE_BROKER_DATABASE": str(self.database)}
        # The module form runs the flask of this interpreter, the benchmark's venv.
        argv = [sys.executable, "-m", *self.arguments]
        with open(self.out_path, "wb") as out, open(self.log_path, "wb") as err:
            self.process = subprocess.Popen(
                argv, cwd=REPO_ROOT, env=env, stdout=out, stderr=err
            )
        self.started_at = time.monotonic()
        # A thread notes the moment the command ends, however late wait() runs.
        self._reaper = threading.Thread(target=self._reap, daemon=True)
        self._reaper.start()
        log.info("purge started on %s (pid %d)", self.database, self.process.pid)
        return self

    def _reap(self):
        self.process.wait()
        self.ended_at = time.monotonic()

    def wait_for_first_commit(self, timeout):
        """Wait until the first transaction committed or the command ended.

        The command reads the clock for its cutoff before that transaction,
        so instances that finish after this returns are not deleted.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.commit_times() or self.process.poll() is not None:
                return
            time.sleep(POLL_INTERVAL)
        raise RuntimeError(
            f"purge committed no transaction within {timeout} s; see {self.log_path}"
        )

    def wait(self, timeout):
        """Wait for the command to end, or raise RuntimeError after ``timeout`` s."""
        self._reaper.join(timeout=timeout)
        if self._reaper.is_alive():
            raise RuntimeError(
                f"purge did not end within {timeout} s; see {self.log_path}"
            )
        log.info(
            "purge ended with exit code %d after %.1f s",
            self.process.returncode,
            self.ended_at - self.started_at,
        )

    def stop(self):
        """Terminate the command if it still runs."""
        if self.process is None or self.process.poll() is not None:
            return
        log.warning("terminating purge (pid %d)", self.process.pid)
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def commit_times(self):
        """Return ``(time.monotonic(), instances)`` of each logged commit."""
        if not self.log_path.exists():
            return []
        # The log stamps wall-clock time, so shift it onto the monotonic clock.
        offset = time.time() - time.monotonic()
        commits = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            match = COMMIT_LINE.match(line)
            if match is None:
                continue
            logged_at = datetime.datetime.strptime(
                match["logged_at"], "%Y-%m-%d %H:%M:%S,%f"
            )
            commits.append((logged_at.timestamp() - offset, int(match["count"])))
        return commits

    def summary(self):
        """Return what the command deleted and how long its transactions took."""
        times = [at for at, _ in self.commit_times()]
        gaps_ms = [(b - a) * 1000 for a, b in zip(times, times[1:], strict=False)]
        printed = TOTAL_LINE.search(self.out_path.read_text(errors="replace"))
        return {
            "command": self.command,
            "exit_code": self.process.returncode,
            "deleted_instances": int(printed["count"]) if printed else None,
            "seconds": _rounded(self.ended_at, self.started_at),
            "transactions": len(times),
            "seconds_from_first_to_last_commit": (
                _rounded(times[-1], times[0]) if times else None
            ),
            "ms_between_commits": _spread(gaps_ms),
        }


def _rounded(end, start):
    return None if end is None or start is None else round(end - start, 2)


def _spread(values):
    """Return the median, nearest-rank 90th percentile and max, or None if empty."""
    if not values:
        return None
    return {
        "median": round(statistics.median(values), 1),
        "p90": round(percentile(values, 90), 1),
        "max": round(max(values), 1),
    }
