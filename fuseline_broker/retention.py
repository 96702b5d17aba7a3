"""Purging of finished instances, by command and lazily during dispatches."""

import threading
import time

#: Seconds between two lazy purges in one process.
LAZY_INTERVAL = 10.0
#: Instances deleted per transaction by the purge command, and the pause
#: between two transactions. Without a pause, handouts and reports waiting in
#: SQLite's busy handler rarely got the lock between batches. In the benchmark
#: the step rate during a purge rose from 0.23 (500 per batch, no pause) to
#: 0.76 (this setting) of the rate without a purge. docs/benchmarks.md has
#: the runs.
COMMAND_BATCH = 50
COMMAND_PAUSE = 0.02


class Retention:
    """How long finished instances are kept, and the lazy purge's pacing."""

    def __init__(self, max_age, lazy_batch, clock=time.time):
        self.max_age = max_age
        self.lazy_batch = lazy_batch
        self.clock = clock
        self._next_run = 0.0
        self._lock = threading.Lock()

    def purge_some(self, storage):
        """Delete one small batch if this process has not done so lately.

        Each batch is its own short transaction, so handouts and reports are
        held up by at most one batch at a time.
        """
        if self.lazy_batch <= 0:
            return 0
        now = self.clock()
        with self._lock:
            if now < self._next_run:
                return 0
            self._next_run = now + LAZY_INTERVAL
        return storage.purge_finished(now - self.max_age, self.lazy_batch)

    def purge_all(self, storage, max_age=None):
        """Delete every instance finished longer ago than ``max_age`` seconds."""
        age = self.max_age if max_age is None else max_age
        cutoff = self.clock() - age
        total = 0
        while True:
            deleted = storage.purge_finished(cutoff, COMMAND_BATCH)
            total += deleted
            if deleted < COMMAND_BATCH:
                return total
            time.sleep(COMMAND_PAUSE)
