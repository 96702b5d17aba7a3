"""The broker's settings: names, defaults, units and parsing from the environment."""

import os
from dataclasses import dataclass

PREFIX = "FUSELINE_BROKER_"


@dataclass(frozen=True)
class Option:
    """One setting: its config key suffix, type, default and meaning."""

    name: str
    kind: type
    default: object
    unit: str
    help: str
    minimum: float | None = None
    secret: bool = False

    @property
    def key(self):
        """Return the key in ``app.config`` and in the environment."""
        return PREFIX + self.name

    def parse(self, raw, source):
        """Convert a raw value to this option's type, or raise ValueError."""
        if self.kind is list:
            return _parse_list(self.key, raw, source)
        if self.kind is str:
            value = str(raw)
        elif isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
            raise ValueError(f"{self.key} from {source} must be a number, got {raw!r}")
        else:
            try:
                value = self.kind(raw)
            except ValueError:
                raise ValueError(
                    f"{self.key} from {source} must be {self.kind.__name__}, "
                    f"got {raw!r}"
                ) from None
            if self.minimum is not None and value < self.minimum:
                raise ValueError(
                    f"{self.key} from {source} must be at least {self.minimum}, "
                    f"got {raw!r}"
                )
        return value


def _parse_list(key, raw, source):
    """Split a comma-separated string, or check a list of strings."""
    if isinstance(raw, str):
        return [item.strip() for item in raw.split(",") if item.strip()]
    if isinstance(raw, (list, tuple)) and all(isinstance(i, str) for i in raw):
        return [item.strip() for item in raw if item.strip()]
    raise ValueError(
        f"{key} from {source} must be a list of strings or a comma-separated "
        f"string, got a {type(raw).__name__}"
    )


OPTIONS = (
    Option(
        "DATABASE",
        str,
        None,
        "path",
        "SQLite file; created with its schema on first start. "
        "Default: fuseline-broker.sqlite3 in the instance folder",
    ),
    Option(
        "WORKER_TTL",
        float,
        30.0,
        "s",
        "a worker is listed as live this long after its last request",
        minimum=0.001,
    ),
    Option(
        "STEP_TIMEOUT",
        float,
        300.0,
        "s",
        "deadline of a step without a timeout policy",
        minimum=0.001,
    ),
    Option(
        "STEP_GRACE",
        float,
        30.0,
        "s",
        "added to the deadline computed from a step's timeout and retry policies",
        minimum=0,
    ),
    Option(
        "MAX_ATTEMPTS",
        int,
        3,
        "handouts",
        "a step fails after this many of its assignments expired",
        minimum=1,
    ),
    Option(
        "MAX_CONTENT_LENGTH",
        int,
        1024 * 1024,
        "bytes",
        "largest accepted request body; larger ones get 413",
        minimum=1,
    ),
    Option(
        "BUSY_TIMEOUT",
        float,
        5.0,
        "s",
        "how long a request waits for SQLite's write lock before 503",
        minimum=0,
    ),
    Option(
        "SQLITE_SYNCHRONOUS",
        str,
        "NORMAL",
        "",
        "SQLite synchronous pragma: NORMAL survives a crash of the broker "
        "process; FULL also survives power loss, at a cost per write",
    ),
    Option(
        "RETENTION",
        float,
        7 * 24 * 3600.0,
        "s",
        "finished instances older than this are purged, and so are workers "
        "last seen longer ago",
        minimum=0,
    ),
    Option(
        "PURGE_BATCH",
        int,
        50,
        "instances",
        "how many old instances, and then old workers, a dispatch purges, at "
        "most every 10 s per process; 0 leaves purging to the purge command",
        minimum=0,
    ),
    Option(
        "MAX_NAME_LENGTH",
        int,
        255,
        "characters",
        "longest accepted name or id (workflow, version, step, repository, worker)",
        minimum=1,
    ),
    Option(
        "MAX_STEPS",
        int,
        1000,
        "steps",
        "most steps one workflow definition may have",
        minimum=1,
    ),
    Option(
        "MAX_RESULT_BYTES",
        int,
        256 * 1024,
        "bytes",
        "largest step result, measured as compact JSON",
        minimum=1,
    ),
    Option(
        "MAX_JSON_DEPTH",
        int,
        32,
        "levels",
        "deepest nesting of lists and objects in run inputs and step results",
        minimum=1,
    ),
    Option(
        "ADMIN_TOKENS",
        list,
        [],
        "",
        "bearer tokens of the admin role, comma-separated; none means open",
        secret=True,
    ),
    Option(
        "WORKER_TOKENS",
        list,
        [],
        "",
        "bearer tokens of the worker role, comma-separated",
        secret=True,
    ),
    Option(
        "SECRET_KEY",
        str,
        None,
        "",
        "Fernet key that encrypts repository credentials in the database; "
        "make one with: flask --app wsgi broker generate-key",
        secret=True,
    ),
    Option(
        "LOG_LEVEL",
        str,
        "INFO",
        "",
        "level of the broker's own log lines when it sets up logging itself",
    ),
)

OPTIONS_BY_KEY = {option.key: option for option in OPTIONS}
SYNCHRONOUS_VALUES = ("OFF", "NORMAL", "FULL", "EXTRA")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
MIN_TOKEN_LENGTH = 16


def load_environment(config, environ=None):
    """Copy every ``FUSELINE_BROKER_*`` setting found in the environment."""
    environ = os.environ if environ is None else environ
    for option in OPTIONS:
        if option.key in environ:
            config[option.key] = option.parse(environ[option.key], "the environment")


def resolve(config):
    """Return ``{name: value}`` of every setting, defaults filled, values checked."""
    values = {}
    for option in OPTIONS:
        raw = config.get(option.key, option.default)
        values[option.name] = None if raw is None else option.parse(raw, "config")
    synchronous = values["SQLITE_SYNCHRONOUS"].upper()
    if synchronous not in SYNCHRONOUS_VALUES:
        raise ValueError(
            f"{PREFIX}SQLITE_SYNCHRONOUS must be one of {SYNCHRONOUS_VALUES}, "
            f"got {synchronous!r}"
        )
    values["SQLITE_SYNCHRONOUS"] = synchronous
    level = values["LOG_LEVEL"].upper()
    if level not in LOG_LEVELS:
        raise ValueError(
            f"{PREFIX}LOG_LEVEL must be one of {LOG_LEVELS}, got {level!r}"
        )
    values["LOG_LEVEL"] = level
    for name in ("ADMIN_TOKENS", "WORKER_TOKENS"):
        if any(len(token) < MIN_TOKEN_LENGTH for token in values[name]):
            # Short tokens are guessable, and log masking would also blank out
            # every word that contains one.
            raise ValueError(
                f"{PREFIX}{name}: every token must have at least "
                f"{MIN_TOKEN_LENGTH} characters"
            )
    return values
