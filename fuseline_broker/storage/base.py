"""The storage interface that the HTTP layer talks to."""

import abc
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Settings:
    """Timing rules a storage applies; every duration is in seconds."""

    worker_ttl: float = 30.0
    step_timeout: float = 300.0
    step_grace: float = 30.0
    max_attempts: int = 3


@dataclass(frozen=True)
class Assignment:
    """A step handed to a worker, in the six keys a fuseline worker reads."""

    workflow_id: str
    instance_id: str
    step_name: str
    payload: dict
    assigned_at: float
    expires_at: float

    def to_wire(self):
        """Return the assignment as the exact JSON object workers expect."""
        return {
            "workflow_id": self.workflow_id,
            "instance_id": self.instance_id,
            "step_name": self.step_name,
            "payload": self.payload,
            "assigned_at": self.assigned_at,
            "expires_at": self.expires_at,
        }


@dataclass(frozen=True)
class ReportOutcome:
    """Whether a step report changed anything, and if not, why."""

    applied: bool
    reason: str | None = None


@dataclass
class Page:
    """One page of a listing."""

    items: list = field(default_factory=list)
    total: int = 0


class RuntimeStorage(abc.ABC):
    """Everything the broker stores, and the rules that move a run forward.

    Every method is safe to call from several threads and processes at once.
    Methods that change state do so atomically: either all of a change is
    stored or none of it. Lookups of unknown ids raise
    :class:`~fuseline_broker.errors.NotFound`.
    """

    @abc.abstractmethod
    def initialize(self):
        """Create the schema if it is missing; safe to call on every start."""

    # Repositories

    @abc.abstractmethod
    def save_repository(self, record):
        """Store a repository record, replacing any record of the same name.

        ``record`` has ``name``, ``url``, ``workflows`` (a list of
        ``module:object`` strings) and ``credentials`` (a str to str mapping).
        """

    @abc.abstractmethod
    def get_repository(self, name):
        """Return one repository record with its credentials."""

    @abc.abstractmethod
    def list_repositories(self, offset, limit):
        """Return a Page of repository records ordered by name, credentials included."""

    @abc.abstractmethod
    def list_workflow_entries(self):
        """Return ``{"repository", "workflow"}`` for each repository entry point."""

    # Workers

    @abc.abstractmethod
    def register_worker(self, definitions):
        """Store the definitions a new worker can run and return its new id.

        Raises DefinitionConflict if a workflow id and version is already
        stored with another definition; then nothing is stored.
        """

    @abc.abstractmethod
    def touch_worker(self, worker_id):
        """Record that a worker made a request now."""

    @abc.abstractmethod
    def list_workers(self, live_only=True):
        """Return worker records; live ones only unless ``live_only`` is false."""

    # Runs

    @abc.abstractmethod
    def dispatch(self, definition, inputs):
        """Store the definition as register_worker does, start a run, return its id."""

    @abc.abstractmethod
    def take_step(self, worker_id):
        """Hand the oldest queued step this worker can run to it.

        Returns an Assignment, or None when nothing is queued for it. Expired
        assignments are taken back first.
        """

    @abc.abstractmethod
    def report_step(self, worker_id, report):
        """Apply a worker's report of a step it ran and return a ReportOutcome.

        ``report`` has ``workflow_id``, ``instance_id``, ``step_name``,
        ``state`` and ``result``. Raises NotFound for an unknown worker,
        instance or step, and NotAssigned for a step the worker never held.
        """

    @abc.abstractmethod
    def get_instance(self, instance_id):
        """Return an instance with every step's state, times and result."""

    @abc.abstractmethod
    def list_instances(self, workflow_id, state, offset, limit):
        """Return a Page of instance summaries, newest first, optionally filtered."""

    @abc.abstractmethod
    def purge_finished(self, finished_before, limit):
        """Delete up to ``limit`` instances that finished before a Unix time.

        Their steps and assignment history go with them; running instances
        are never touched. Returns how many instances were deleted.
        """

    @abc.abstractmethod
    def purge_workers(self, seen_before, limit):
        """Delete up to ``limit`` workers last seen before a Unix time.

        The workflow versions they registered go with them. A live worker,
        one seen within the worker TTL, is never deleted, whatever the time
        given, because its next request would get 404. Returns how many
        workers were deleted.
        """
