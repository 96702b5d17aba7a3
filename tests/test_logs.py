"""Log filters: secrets masked, identical warnings rate-limited."""

import logging

from fuseline_broker.logs import RepeatFilter, SecretMaskingFilter


def record(message, *args, level=logging.WARNING):
    return logging.LogRecord(
        "fuseline_broker.test", level, __file__, 1, message, args, None
    )


def test_secret_masked_in_message_and_args():
    masking = SecretMaskingFilter(["tok-123", "key-456"])
    entry = record("GET /t/%s/workers key=%s", "tok-123", "key-456")
    assert masking.filter(entry)
    assert entry.getMessage() == "GET /t/***/workers key=***"


def test_repeats_dropped_within_window():
    now = [0.0]
    repeats = RepeatFilter(window=60, clock=lambda: now[0])
    assert repeats.filter(record("disk full"))
    assert not repeats.filter(record("disk full"))
    assert not repeats.filter(record("disk full"))
    assert repeats.filter(record("other warning"))

    now[0] = 61.0
    again = record("disk full")
    assert repeats.filter(again)
    assert again.getMessage() == "disk full (repeated 2 more times)"


def test_info_lines_never_dropped():
    repeats = RepeatFilter(window=60, clock=lambda: 0.0)
    assert all(repeats.filter(record("handout", level=logging.INFO)) for _ in range(5))
