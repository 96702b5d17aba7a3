"""Purging of finished instances and stopped workers, by command and lazily."""

import threading
import time
from typing import NamedTuple

#: Seconds between two lazy purges in one process.
LAZY_INTERVAL = 10.0
#: Instances deleted per transaction by the purge command.
COMMAND_BATCH = 50
#: The maximum share of its run time that the purge command spends in its
#: transactions. It sleeps the rest, because under full load whatever share
#: of SQLite's write lock it takes can come off the broker's step rate. In
#: the benchmark the step rate during a purge was 0.83 and 0.93 of the rate
#: without one at a share of 0.1, and 1.05 and 1.07 at this share.
COMMAND_SHARE = 0.05
#: The shortest pause between two transactions of the purge command, in
#: seconds, so that waiting writers get the lock between batches.
COMMAND_PAUSE = 0.02


class Purged(NamedTuple):
    """How many rows of each kind a purge deleted."""

    instances: int
    workers: int


class Retention:
    """How long finished instances are kept, and the lazy purge's pacing."""

    def __init__(self, max_age, lazy_batch, clock=time.time):
        self.max_age = max_age
        self.lazy_batch = lazy_batch
        self.clock = clock
        self._next_run = 0.0
        self._lock = threading.Lock()

    def purge_some(self, storage):
        """Delete one small batch of instances, then of workers, unless done lately.

        Each batch is its own short transaction, so handouts and reports are
        held up by at most one batch at a time. Returns the instances deleted.
        """
        if self.lazy_batch <= 0:
            return 0
        now = self.clock()
        with self._lock:
            if now < self._next_run:
                return 0
            self._next_run = now + LAZY_INTERVAL
        cutoff = now - self.max_age
        deleted = storage.purge_finished(cutoff, self.lazy_batch)
        storage.purge_workers(cutoff, self.lazy_batch)
        return deleted

    def purge_all(self, storage, max_age=None, share=COMMAND_SHARE):
        """Delete finished instances and stopped workers older than ``max_age`` seconds.

        Workers are selected by when they were last seen, and live workers
        stay. Returns a Purged.

        Batches of COMMAND_BATCH rows run in their own transactions. After a
        batch that took t seconds, the purge sleeps ``t * (1 - share) /
        share`` seconds, and at least COMMAND_PAUSE, so it spends at most
        ``share`` of its time deleting.
        """
        if not 0 < share <= 1:
            raise ValueError(f"share must be above 0 and at most 1, received {share}")
        age = self.max_age if max_age is None else max_age
        cutoff = self.clock() - age
        return Purged(
            _paced(lambda: storage.purge_finished(cutoff, COMMAND_BATCH), share),
            _paced(lambda: storage.purge_workers(cutoff, COMMAND_BATCH), share),
        )


def _paced(purge_batch, share):
    """Call ``purge_batch`` until it deletes less than a full batch.

    Pauses after each full batch as ``Retention.purge_all`` describes, and
    returns the total deleted.
    """
    total = 0
    while True:
        started = time.monotonic()
        deleted = purge_batch()
        took = time.monotonic() - started
        total += deleted
        if deleted < COMMAND_BATCH:
            return total
        time.sleep(max(COMMAND_PAUSE, took * (1 - share) / share))
