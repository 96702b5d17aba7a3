"""Log filters: no secret in any line, and no flood of identical warnings."""

import logging
import threading
import time

MASK = "***"
#: Loggers outside the package that print request data.
FOREIGN_LOGGERS = ("gunicorn.access", "gunicorn.error", "werkzeug")


class SecretMaskingFilter(logging.Filter):
    """Replace every configured secret in a log record's text with ``***``."""

    def __init__(self, secrets):
        super().__init__()
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def filter(self, record):
        if not self.secrets:
            return True
        message = record.getMessage()
        masked = message
        for secret in self.secrets:
            masked = masked.replace(secret, MASK)
        if masked != message:
            record.msg, record.args = masked, None
        return True


class RepeatFilter(logging.Filter):
    """Let one of a run of identical warnings through per ``window`` seconds.

    The next line let through after a quiet spell reports how many copies
    were dropped. Lines below WARNING always pass.
    """

    MAX_TRACKED = 1000

    def __init__(self, window=60.0, clock=time.monotonic):
        super().__init__()
        self.window = window
        self.clock = clock
        self._seen = {}
        self._lock = threading.Lock()

    def filter(self, record):
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.levelno, record.getMessage())
        now = self.clock()
        with self._lock:
            first_at, dropped = self._seen.get(key, (None, 0))
            if first_at is not None and now - first_at < self.window:
                self._seen[key] = (first_at, dropped + 1)
                return False
            if len(self._seen) >= self.MAX_TRACKED:
                self._seen.clear()
            self._seen[key] = (now, 0)
        if dropped:
            record.msg = f"{record.getMessage()} (repeated {dropped} more times)"
            record.args = None
        return True


def package_loggers():
    """Return every logger of this package created so far."""
    names = [
        name
        for name in logging.Logger.manager.loggerDict
        if name == "fuseline_broker" or name.startswith("fuseline_broker.")
    ]
    return [logging.getLogger(name) for name in names]


def install_filters(secrets):
    """Attach the masking and repeat filters to the package's and gunicorn's loggers.

    A filter on a logger applies only to records logged on that logger
    itself, so each module's logger gets its own.
    """
    masking = SecretMaskingFilter(secrets)
    repeats = RepeatFilter()
    for logger in package_loggers():
        _replace_filter(logger, masking)
        _replace_filter(logger, repeats)
    for name in FOREIGN_LOGGERS:
        _replace_filter(logging.getLogger(name), masking)


def _replace_filter(logger, new):
    # Applying init_app twice (tests, several apps) must not stack filters.
    for old in [f for f in logger.filters if type(f) is type(new)]:
        logger.removeFilter(old)
    logger.addFilter(new)
