"""The writer queue: one holder at a time across threads and processes."""

import multiprocessing
import threading
import time

import pytest

from fuseline_broker.storage.writelock import (
    LOCK_FILE_SUFFIX,
    WriterLock,
    WriterLockTimeout,
)

HOLD = 0.02


def _hold_and_record(database, intervals, ready, release):
    """Hold the lock until ``release`` is set; report when it was held."""
    lock = WriterLock(database, timeout=5)
    with lock.hold():
        start = time.monotonic()
        ready.set()
        release.wait(5)
        intervals.put((start, time.monotonic()))


def test_threads_hold_the_lock_one_at_a_time(tmp_path):
    lock = WriterLock(str(tmp_path / "broker.db"), timeout=5)
    holders, most = [], [0]
    guard = threading.Lock()

    def write():
        for _ in range(5):
            with lock.hold():
                with guard:
                    holders.append(1)
                    most[0] = max(most[0], len(holders))
                time.sleep(HOLD / 10)
                with guard:
                    holders.pop()

    threads = [threading.Thread(target=write) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most[0] == 1


def test_a_second_process_waits_for_the_first(tmp_path):
    database = str(tmp_path / "broker.db")
    context = multiprocessing.get_context("fork")
    intervals, ready, release = context.Queue(), context.Event(), context.Event()
    first = context.Process(
        target=_hold_and_record, args=(database, intervals, ready, release)
    )
    first.start()
    assert ready.wait(5)
    lock = WriterLock(database, timeout=5)
    threading.Timer(HOLD * 5, release.set).start()
    with lock.hold():
        second_start = time.monotonic()
    first.join(5)
    first_start, first_end = intervals.get(timeout=5)
    assert first_start < first_end <= second_start
    # The waiter tries again within a few ms of the release, far sooner
    # than SQLite's busy handler, which sleeps up to 100 ms at a time.
    assert second_start - first_end < 0.5
    assert (tmp_path / f"broker.db{LOCK_FILE_SUFFIX}").exists()


def test_times_out_while_another_process_holds_it(tmp_path):
    database = str(tmp_path / "broker.db")
    context = multiprocessing.get_context("fork")
    intervals, ready, release = context.Queue(), context.Event(), context.Event()
    holder = context.Process(
        target=_hold_and_record, args=(database, intervals, ready, release)
    )
    holder.start()
    try:
        assert ready.wait(5)
        lock = WriterLock(database, timeout=0.1)
        started = time.monotonic()
        with pytest.raises(WriterLockTimeout, match="over 0.1 s"):
            with lock.hold():
                pass
        assert time.monotonic() - started >= 0.1
    finally:
        release.set()
        holder.join(5)
    with lock.hold():
        pass  # Free again once the holder is done.


def test_released_when_the_block_raises(tmp_path):
    lock = WriterLock(str(tmp_path / "broker.db"), timeout=0.1)
    with pytest.raises(RuntimeError):
        with lock.hold():
            raise RuntimeError("write failed")
    other = WriterLock(str(tmp_path / "broker.db"), timeout=0.1)
    with other.hold():
        pass


def test_without_a_lock_file_sqlite_alone_orders_writers(tmp_path):
    # No lock file can be made in a folder that does not exist, so hold()
    # holds nothing and two threads may both pass it.
    lock = WriterLock(str(tmp_path / "missing" / "broker.db"), timeout=0.1)
    with lock.hold():
        _take_in_thread(lock)
    assert not (tmp_path / "missing").exists()


def test_close_lets_the_thread_open_the_file_again(tmp_path):
    lock = WriterLock(str(tmp_path / "broker.db"), timeout=0.1)
    with lock.hold():
        pass
    lock.close()
    with lock.hold():
        with pytest.raises(WriterLockTimeout):
            _take_in_thread(lock)


def _take_in_thread(lock):
    """Take the lock in another thread; re-raise what that thread raised."""
    failure = []

    def take():
        try:
            with lock.hold():
                pass
        except WriterLockTimeout as exc:
            failure.append(exc)

    thread = threading.Thread(target=take)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
