"""A turn-taking lock for the writers of one SQLite file that wakes them promptly.

SQLite lets one connection write at a time. A connection that finds the
write lock taken waits in SQLite's busy handler, which sleeps 1, 2, 5, 10,
15, 20, 25, 25, 25, 50, 50 and then 100 ms between tries. Under load most
waits are far shorter than those sleeps, so a waiter often sleeps on while
the lock lies free, and a slow request waits through several long sleeps.

``WriterLock`` makes the broker's own writers take turns before they ask
SQLite: each thread of each process holds an ``flock`` on a file beside the
database for the length of its transaction, and a thread that finds it
taken tries again after 0.1 ms, doubling to at most 1 ms. Every thread
waits alike, so no process or thread is favoured. It only schedules
writers: ``BEGIN IMMEDIATE`` still guards every change, so a writer that
does not use this lock (the ``sqlite3`` shell, or a process that opened a
lock file since deleted) is still kept out by SQLite, only less promptly.
"""

import contextlib
import fcntl
import os
import threading
import time

#: Suffix of the lock file, next to SQLite's own "-wal" and "-shm" files.
LOCK_FILE_SUFFIX = "-writer"
#: First and longest sleep between two tries of the file lock, in seconds.
FIRST_RETRY = 0.0001
LONGEST_RETRY = 0.001


class WriterLockTimeout(Exception):
    """Another writer held the lock for longer than the timeout."""


class WriterLock:
    """Serialize the writers of one database file across threads and processes.

    Where no lock file can be made (an in-memory database, a read-only
    folder), ``hold`` does nothing and SQLite alone orders the writers.
    """

    def __init__(self, database_path, timeout):
        in_memory = database_path in ("", ":memory:")
        self.path = None if in_memory else database_path + LOCK_FILE_SUFFIX
        self.timeout = timeout
        self._local = threading.local()

    def _file(self):
        """Return this thread's descriptor of the lock file, or None."""
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            # A descriptor inherited from the parent shares its lock.
            local.pid, local.fd = os.getpid(), None
            if self.path is not None:
                with contextlib.suppress(OSError):
                    local.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        return local.fd

    @contextlib.contextmanager
    def hold(self):
        """Hold the lock for the block; raise WriterLockTimeout if it never comes."""
        fd = self._file()
        if fd is None:
            yield
            return
        self._lock_file(fd, time.monotonic() + self.timeout)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def close(self):
        """Close this thread's descriptor of the lock file, if it has one."""
        fd = getattr(self._local, "fd", None)
        self._local.pid = self._local.fd = None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _lock_file(self, fd, deadline):
        pause = FIRST_RETRY
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() + pause > deadline:
                    raise WriterLockTimeout(self._timeout_message()) from None
            time.sleep(pause)
            pause = min(pause * 2, LONGEST_RETRY)

    def _timeout_message(self):
        return f"another writer held the database for over {self.timeout:g} s"
