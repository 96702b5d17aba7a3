"""RuntimeStorage on one SQLite file, shared by every gunicorn process."""

import contextlib
import json
import logging
import math
import os
import sqlite3
import threading
import time
import uuid
from importlib import resources

from .. import dag
from ..crypto import is_sealed
from ..errors import (
    DefinitionConflict,
    InvalidWorkflow,
    NotAssigned,
    NotFound,
    StorageUnavailable,
)
from .base import Assignment, Page, ReportOutcome, RuntimeStorage, Settings

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
#: Seconds between two writes of one worker's last_seen by one process; far
#: below any useful WORKER_TTL, and it spares most keep-alives a write.
TOUCH_INTERVAL = 1.0

if sqlite3.sqlite_version_info < (3, 35):
    raise ImportError(
        f"SQLiteStorage needs SQLite 3.35 or newer for RETURNING; this Python "
        f"links SQLite {sqlite3.sqlite_version}"
    )


def _dumps(value):
    return json.dumps(value, separators=(",", ":"))


class SQLiteStorage(RuntimeStorage):
    """Store everything in one SQLite file in WAL mode.

    Each thread of each process opens its own connection on first use and
    keeps it. Every change runs in a ``BEGIN IMMEDIATE`` transaction, which
    takes SQLite's write lock up front, so two requests never hand out the
    same step and a reader never sees half a change.
    """

    def __init__(
        self,
        path,
        settings=None,
        *,
        busy_timeout=5.0,
        synchronous="NORMAL",
        clock=time.time,
        cipher=None,
    ):
        self.path = os.fspath(path)
        self.cipher = cipher
        self.settings = settings or Settings()
        self.busy_timeout = busy_timeout
        self.synchronous = synchronous
        self.clock = clock
        self._local = threading.local()
        # Definitions never change once stored, so each process caches them.
        self._definitions = {}
        self._worker_workflows = {}
        # When this process last stored each worker's last_seen. An entry
        # under TOUCH_INTERVAL old means the worker exists, because
        # purge_workers spares workers stored that recently.
        self._touched = {}
        # Workers whose last poll in this process got a step.
        self._busy = set()

    # Connections and transactions

    def _connection(self):
        conn = getattr(self._local, "conn", None)
        # A connection must not cross a fork: gunicorn may import the app in
        # the master and fork workers from it.
        if conn is None or self._local.pid != os.getpid():
            conn = self._connect()
            self._local.conn = conn
            self._local.pid = os.getpid()
        return conn

    def _connect(self):
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.row_factory = sqlite3.Row
            self._enable_wal(conn)
            conn.execute(f"pragma synchronous = {self.synchronous}")
            conn.execute(f"pragma busy_timeout = {int(self.busy_timeout * 1000)}")
            if self.cipher is not None:
                # Zero freed space, so a migrated plain credential leaves no copy.
                conn.execute("pragma secure_delete = on")
        except sqlite3.Error as exc:
            raise StorageUnavailable(
                f"cannot open database {self.path!r}: {exc}"
            ) from exc
        return conn

    def _enable_wal(self, conn):
        """Switch the file to WAL, retrying while another process has it locked.

        On a new file the switch needs an exclusive lock, and SQLite reports
        "database is locked" at once instead of waiting out the busy timeout,
        so gunicorn processes starting together would otherwise fail to boot.
        """
        deadline = time.monotonic() + max(self.busy_timeout, 1.0)
        while True:
            try:
                conn.execute("pragma journal_mode = wal")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def close(self):
        """Close this thread's connection, if it has one."""
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def _fail(self, conn, exc, doing):
        """Roll back, drop the connection and raise StorageUnavailable.

        After a disk-full or I/O error SQLite may leave a connection unusable.
        The next request of this thread opens a fresh one, so the broker
        recovers without a restart once the fault is gone.
        """
        _rollback(conn)
        self.close()
        raise StorageUnavailable(f"database {doing} failed: {exc}") from exc

    @contextlib.contextmanager
    def _write(self):
        """Run the block in one write transaction, rolled back on any error."""
        conn = self._connection()
        try:
            conn.execute("begin immediate")
        except sqlite3.Error as exc:
            self._fail(conn, exc, "write")
        try:
            yield conn
            conn.execute("commit")
        except sqlite3.Error as exc:
            self._fail(conn, exc, "write")
        except BaseException:
            _rollback(conn)
            raise

    @contextlib.contextmanager
    def _read(self):
        """Run the block in one read transaction, a consistent snapshot."""
        conn = self._connection()
        try:
            conn.execute("begin")
            yield conn
            conn.execute("rollback")
        except sqlite3.Error as exc:
            self._fail(conn, exc, "read")
        except BaseException:
            _rollback(conn)
            raise

    def initialize(self):
        """Create the tables and indexes that are missing."""
        text = resources.files(__package__).joinpath("schema.sql").read_text()
        # Comment lines go first, because a semicolon in one would split a
        # statement.
        script = "\n".join(
            line for line in text.splitlines() if not line.lstrip().startswith("--")
        )
        conn = self._connection()
        try:
            with self._write():
                for statement in script.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"pragma user_version = {SCHEMA_VERSION}")
                sealed = self._seal_plain_credentials(conn)
            if sealed:
                # Push the rewritten pages into the main file and empty the WAL,
                # which keeps the plain text until a checkpoint.
                conn.execute("pragma wal_checkpoint(truncate)")
                log.info("encrypted the credentials of %d repositories", sealed)
        except StorageUnavailable:
            raise
        except sqlite3.Error as exc:
            raise StorageUnavailable(f"cannot create schema: {exc}") from exc

    def _seal_plain_credentials(self, conn):
        """Encrypt credentials stored before a secret key was configured."""
        if self.cipher is None:
            return 0
        rows = conn.execute(
            "select name, credentials from repositories"
            " where credentials not like 'fernet:%'"
        ).fetchall()
        for row in rows:
            conn.execute(
                "update repositories set credentials = ? where name = ?",
                (self.cipher.seal(row["credentials"]), row["name"]),
            )
        return len(rows)

    def _seal(self, credentials):
        text = _dumps(credentials)
        return text if self.cipher is None else self.cipher.seal(text)

    def _unseal(self, stored):
        if self.cipher is not None:
            return json.loads(self.cipher.unseal(stored))
        if is_sealed(stored):
            raise StorageUnavailable(
                "repository credentials are encrypted; set "
                "FUSELINE_BROKER_SECRET_KEY to the key they were encrypted with"
            )
        return json.loads(stored)

    def _repository_record(self, row):
        return {
            "name": row["name"],
            "url": row["url"],
            "workflows": json.loads(row["workflows"]),
            "credentials": self._unseal(row["credentials"]),
        }

    # Repositories

    def save_repository(self, record):
        with self._write() as conn:
            conn.execute(
                "insert into repositories"
                " (name, url, workflows, credentials, updated_at)"
                " values (?, ?, ?, ?, ?)"
                " on conflict (name) do update set url = excluded.url,"
                " workflows = excluded.workflows,"
                " credentials = excluded.credentials,"
                " updated_at = excluded.updated_at",
                (
                    record["name"],
                    record["url"],
                    _dumps(record["workflows"]),
                    self._seal(record["credentials"]),
                    self.clock(),
                ),
            )

    def get_repository(self, name):
        with self._read() as conn:
            row = conn.execute(
                "select * from repositories where name = ?", (name,)
            ).fetchone()
        if row is None:
            raise NotFound(f"repository {name!r} not found")
        return self._repository_record(row)

    def list_repositories(self, offset, limit):
        with self._read() as conn:
            total = conn.execute("select count(*) from repositories").fetchone()[0]
            rows = conn.execute(
                "select * from repositories order by name limit ? offset ?",
                (limit, offset),
            ).fetchall()
        return Page([self._repository_record(row) for row in rows], total)

    def list_workflow_entries(self):
        with self._read() as conn:
            rows = conn.execute(
                "select name, workflows from repositories order by name"
            ).fetchall()
        return [
            {"repository": row["name"], "workflow": entry}
            for row in rows
            for entry in json.loads(row["workflows"])
        ]

    # Definitions

    def _store_definition(self, conn, definition):
        """Store a definition, or check it matches the one already stored."""
        try:
            dag.validate_definition(definition)
        except dag.InvalidDefinition as exc:
            raise InvalidWorkflow(str(exc)) from exc
        key = dag.definition_key(definition)
        stored = self._load_definition(conn, key)
        if stored is None:
            conn.execute(
                "insert into workflows (workflow_id, version, definition,"
                " registered_at) values (?, ?, ?, ?)",
                (*key, dag.canonical_json(definition), self.clock()),
            )
            return
        difference = dag.describe_difference(stored, definition)
        if difference is not None:
            raise DefinitionConflict(
                f"workflow {key[0]!r} version {key[1]!r} is already stored "
                f"with another definition: {difference}"
            )

    def _load_definition(self, conn, key):
        definition = self._definitions.get(key)
        if definition is not None:
            return definition
        row = conn.execute(
            "select definition from workflows where workflow_id = ? and version = ?",
            key,
        ).fetchone()
        if row is None:
            return None
        definition = json.loads(row["definition"])
        self._definitions[key] = definition
        return definition

    # Workers

    def register_worker(self, definitions):
        worker_id = uuid.uuid4().hex
        with self._write() as conn:
            # Read the clock once the write lock is held: a request that
            # waited for the lock must not get a time from before the wait.
            now = self.clock()
            keys = []
            for definition in definitions:
                self._store_definition(conn, definition)
                key = dag.definition_key(definition)
                if key not in keys:
                    keys.append(key)
            conn.execute(
                "insert into workers (worker_id, connected_at, last_seen)"
                " values (?, ?, ?)",
                (worker_id, now, now),
            )
            conn.executemany(
                "insert into worker_workflows (worker_id, workflow_id, version)"
                " values (?, ?, ?)",
                [(worker_id, *key) for key in keys],
            )
        log.info(
            "registered worker=%s workflows=%s",
            worker_id,
            ",".join(f"{w}@{v}" for w, v in keys) or "none",
            extra={"action": "register_worker", "worker_id": worker_id},
        )
        return worker_id

    def touch_worker(self, worker_id):
        self._touch_if_due(worker_id)

    def _touch_unless_recent(self, conn, worker_id, now):
        """Store last_seen unless this process did so within TOUCH_INTERVAL.

        A worker touched within TOUCH_INTERVAL is known to exist, because
        purge_workers spares it. Returns whether last_seen was written.
        """
        last = self._touched.get(worker_id)
        if last is not None and now - last < TOUCH_INTERVAL:
            return False
        self._touch(conn, worker_id, now)
        return True

    def _touch(self, conn, worker_id, now):
        cursor = conn.execute(
            "update workers set last_seen = ? where worker_id = ?", (now, worker_id)
        )
        if cursor.rowcount != 1:
            raise NotFound(f"worker {worker_id!r} not found; register it first")

    def list_workers(self, live_only=True):
        since = self.clock() - self.settings.worker_ttl if live_only else -1.0
        with self._read() as conn:
            rows = conn.execute(
                "select * from workers where last_seen >= ? order by connected_at",
                (since,),
            ).fetchall()
        return [
            {
                "worker_id": row["worker_id"],
                "connected_at": row["connected_at"],
                "last_seen": row["last_seen"],
                "last_task": json.loads(row["last_task"]) if row["last_task"] else None,
            }
            for row in rows
        ]

    def _workflows_of(self, conn, worker_id):
        keys = self._worker_workflows.get(worker_id)
        if keys is None:
            rows = conn.execute(
                "select workflow_id, version from worker_workflows where worker_id = ?",
                (worker_id,),
            ).fetchall()
            keys = [(row["workflow_id"], row["version"]) for row in rows]
            self._worker_workflows[worker_id] = keys
        return keys

    # Runs

    def dispatch(self, definition, inputs):
        instance_id = uuid.uuid4().hex
        key = dag.definition_key(definition)
        with self._write() as conn:
            now = self.clock()
            self._store_definition(conn, definition)
            conn.execute(
                "insert into instances (instance_id, workflow_id, version, state,"
                " inputs, created_at) values (?, ?, ?, ?, ?, ?)",
                (instance_id, *key, "RUNNING", _dumps(inputs), now),
            )
            conn.executemany(
                "insert into steps (instance_id, step_name, state) values (?, ?, ?)",
                [(instance_id, name, dag.PENDING) for name in definition["steps"]],
            )
            for name in dag.starting_steps(definition):
                self._enqueue(conn, key, instance_id, name)
        log.info(
            "dispatched workflow=%s@%s instance=%s",
            *key,
            instance_id,
            extra={"action": "dispatch", "instance_id": instance_id},
        )
        return instance_id

    def _enqueue(self, conn, key, instance_id, step_name):
        conn.execute(
            "update steps set state = ? where instance_id = ? and step_name = ?",
            (dag.QUEUED, instance_id, step_name),
        )
        conn.execute(
            "insert into queue (workflow_id, version, instance_id, step_name)"
            " values (?, ?, ?, ?)",
            (*key, instance_id, step_name),
        )

    def take_step(self, worker_id):
        # A worker that just got a step will likely find another, so the
        # read-only check for idle polls would only add a statement.
        if worker_id not in self._busy and self._nothing_to_do(worker_id):
            self._touch_if_due(worker_id)
            return None
        with self._write() as conn:
            now = self.clock()
            touched = self._touch_unless_recent(conn, worker_id, now)
            self._expire_overdue(conn, now)
            head = self._queue_head(conn, self._workflows_of(conn, worker_id))
            assignment = None
            if head is not None:
                assignment, attempt = self._assign(conn, head, worker_id, now)
        if touched:
            self._touched[worker_id] = now
        if assignment is None:
            self._busy.discard(worker_id)
            return None
        self._busy.add(worker_id)
        _log_handout(assignment, worker_id, attempt)
        return assignment

    def _nothing_to_do(self, worker_id):
        """Tell, with a read only, that no step is queued or overdue for a worker.

        Idle polls are the most frequent request of an idle fleet. Serving
        them without the write lock keeps them from queueing behind handouts
        and reports. A step queued right after this check is seen next poll.
        """
        keys = self._worker_workflows.get(worker_id)
        if keys is None:
            return False  # Unknown here: the full path checks the worker exists.
        queued = " or ".join(
            ["exists (select 1 from queue where workflow_id = ? and version = ?)"]
            * len(keys)
        )
        query = (
            "select exists (select 1 from steps"
            " where state = 'RUNNING' and expires_at < ?)"
            + (f" or {queued}" if keys else "")
        )
        params = [self.clock()] + [part for key in keys for part in key]
        # One statement in autocommit mode reads one consistent snapshot.
        conn = self._connection()
        try:
            found = conn.execute(query, params).fetchone()[0]
        except sqlite3.Error as exc:
            self._fail(conn, exc, "read")
        return not found

    def _touch_if_due(self, worker_id):
        """Store last_seen unless this process stored it within TOUCH_INTERVAL."""
        now = self.clock()
        if now - self._touched.get(worker_id, -math.inf) < TOUCH_INTERVAL:
            return
        with self._write() as conn:
            now = self.clock()
            self._touch(conn, worker_id, now)
        self._touched[worker_id] = now

    def _queue_head(self, conn, keys):
        """Return the oldest queue row among the given workflow versions."""
        head = None
        # One indexed lookup per workflow version: the cost does not grow
        # with the backlog of workflows this worker does not run.
        for key in keys:
            row = conn.execute(
                "select seq, workflow_id, version, instance_id, step_name from queue"
                " where workflow_id = ? and version = ? order by seq limit 1",
                key,
            ).fetchone()
            if row is not None and (head is None or row["seq"] < head["seq"]):
                head = row
        return head

    def _assign(self, conn, head, worker_id, now):
        key = (head["workflow_id"], head["version"])
        instance_id, step_name = head["instance_id"], head["step_name"]
        definition = self._load_definition(conn, key)
        step = definition["steps"][step_name]
        expires_at = now + dag.step_budget(
            step, self.settings.step_timeout, self.settings.step_grace
        )

        conn.execute("delete from queue where seq = ?", (head["seq"],))
        attempt = conn.execute(
            "update steps set state = ?, attempts = attempts + 1, worker_id = ?,"
            " assigned_at = ?, expires_at = ?"
            " where instance_id = ? and step_name = ? returning attempts",
            (dag.RUNNING, worker_id, now, expires_at, instance_id, step_name),
        ).fetchone()[0]
        conn.execute(
            "insert into assignments (instance_id, step_name, attempt, worker_id,"
            " assigned_at, expires_at) values (?, ?, ?, ?, ?, ?)",
            (instance_id, step_name, attempt, worker_id, now, expires_at),
        )

        payload = self._payload(conn, instance_id, step)
        assignment = Assignment(
            key[0], instance_id, step_name, payload, now, expires_at
        )
        return assignment, attempt

    def _payload(self, conn, instance_id, step):
        inputs = conn.execute(
            "select inputs from instances where instance_id = ?", (instance_id,)
        ).fetchone()["inputs"]
        names = step["predecessors"]
        rows = []
        if names:
            rows = conn.execute(
                "select step_name, state, result from steps where instance_id = ?"
                f" and step_name in ({', '.join('?' * len(names))})",
                (instance_id, *names),
            ).fetchall()
        states = {row["step_name"]: row["state"] for row in rows}
        results = {
            row["step_name"]: json.loads(row["result"]) if row["result"] else None
            for row in rows
        }
        return {
            "workflow_inputs": json.loads(inputs) or {},
            "results": dag.predecessor_results(step, states, results),
        }

    def _expire_overdue(self, conn, now):
        """Take back every step whose assignment deadline has passed."""
        overdue = conn.execute(
            "select instance_id, step_name, attempts, worker_id from steps"
            " where state = 'RUNNING' and expires_at < ?",
            (now,),
        ).fetchall()
        for row in overdue:
            instance_id, step_name = row["instance_id"], row["step_name"]
            instance = conn.execute(
                "select workflow_id, version from instances where instance_id = ?",
                (instance_id,),
            ).fetchone()
            key = (instance["workflow_id"], instance["version"])
            extra = {
                "action": "expire",
                "workflow_id": key[0],
                "instance_id": instance_id,
                "step_name": step_name,
                "worker_id": row["worker_id"],
            }
            if row["attempts"] < self.settings.max_attempts:
                self._enqueue(conn, key, instance_id, step_name)
                log.warning(
                    "expired, queued again: workflow=%s instance=%s step=%s"
                    " worker=%s attempt=%d",
                    key[0],
                    instance_id,
                    step_name,
                    row["worker_id"],
                    row["attempts"],
                    extra=extra,
                )
                continue
            result = {
                "error": "timed out",
                "message": (
                    f"{row['attempts']} assignments of this step expired before "
                    "a worker reported it"
                ),
                "attempts": row["attempts"],
            }
            conn.execute(
                "update steps set state = ?, result = ?, finished_at = ?,"
                " timed_out = 1 where instance_id = ? and step_name = ?",
                (dag.FAILED, _dumps(result), now, instance_id, step_name),
            )
            log.error(
                "expired for good, step failed: workflow=%s instance=%s step=%s"
                " worker=%s attempts=%d",
                key[0],
                instance_id,
                step_name,
                row["worker_id"],
                row["attempts"],
                extra=extra,
            )
            self._advance(conn, key, instance_id, step_name, dag.FAILED, None, now)

    def report_step(self, worker_id, report):
        instance_id, step_name = report["instance_id"], report["step_name"]
        extra = {
            "action": "report",
            "workflow_id": report["workflow_id"],
            "instance_id": instance_id,
            "step_name": step_name,
            "worker_id": worker_id,
        }
        with self._write() as conn:
            now = self.clock()
            touched = self._touch_unless_recent(conn, worker_id, now)
            step = conn.execute(
                "select steps.*, instances.workflow_id, instances.version"
                " from steps join instances using (instance_id)"
                " where instance_id = ? and step_name = ?",
                (instance_id, step_name),
            ).fetchone()
            if step is None or step["workflow_id"] != report["workflow_id"]:
                self._raise_unknown_step(conn, report)

            refusal = self._stale_report_reason(conn, step, worker_id, report)
            if refusal is None:
                key = (step["workflow_id"], step["version"])
                self._apply_report(conn, key, worker_id, report, now, step["state"])
        if touched:
            self._touched[worker_id] = now

        if refusal is not None:
            log.warning(
                "stale report ignored: workflow=%s instance=%s step=%s worker=%s"
                " reason=%s",
                report["workflow_id"],
                instance_id,
                step_name,
                worker_id,
                refusal,
                extra={**extra, "action": "stale_report"},
            )
            return ReportOutcome(False, refusal)
        # Successes are DEBUG: they are the common case, and the steps table
        # keeps the same facts.
        log.log(
            logging.DEBUG if report["state"] == dag.SUCCEEDED else logging.INFO,
            "report workflow=%s instance=%s step=%s worker=%s state=%s",
            report["workflow_id"],
            instance_id,
            step_name,
            worker_id,
            report["state"],
            extra=extra,
        )
        return ReportOutcome(True)

    def _raise_unknown_step(self, conn, report):
        """Raise NotFound naming the unknown instance or step of a report."""
        instance = conn.execute(
            "select workflow_id from instances where instance_id = ?",
            (report["instance_id"],),
        ).fetchone()
        if instance is None or instance["workflow_id"] != report["workflow_id"]:
            raise NotFound(
                f"workflow {report['workflow_id']!r} has no instance "
                f"{report['instance_id']!r}"
            )
        raise NotFound(
            f"instance {report['instance_id']!r} has no step {report['step_name']!r}"
        )

    def _stale_report_reason(self, conn, step, worker_id, report):
        """Return why a report must be ignored, or None to apply it.

        Raises NotAssigned if the worker never held the step.
        """
        held_now = step["worker_id"] == worker_id
        if held_now and step["state"] in (dag.RUNNING, dag.QUEUED):
            # QUEUED with a holder: the deadline passed but no other worker
            # took the step yet, so the late report still counts.
            return None
        if held_now and step["timed_out"]:
            return (
                f"the step expired {step['attempts']} times and was marked FAILED "
                "before this report arrived"
            )
        if held_now:
            same = step["state"] == report["state"] and (
                step["result"] == _dumps(report["result"])
            )
            if same:
                return "this report was already applied"
            raise NotAssigned(
                f"step {step['step_name']!r} of instance {step['instance_id']!r} "
                f"already finished as {step['state']}; a second, different report "
                f"({report['state']}) cannot replace it"
            )
        held_before = conn.execute(
            "select 1 from assignments where instance_id = ? and step_name = ?"
            " and worker_id = ?",
            (step["instance_id"], step["step_name"], worker_id),
        ).fetchone()
        if held_before is not None:
            return "the assignment expired and the step was handed to another worker"
        raise NotAssigned(
            f"worker {worker_id!r} never held step {step['step_name']!r} "
            f"of instance {step['instance_id']!r}"
        )

    def _apply_report(self, conn, key, worker_id, report, now, previous_state):
        instance_id, step_name = report["instance_id"], report["step_name"]
        state, result = report["state"], report["result"]
        conn.execute(
            "update steps set state = ?, result = ?, finished_at = ?"
            " where instance_id = ? and step_name = ?",
            (state, _dumps(result), now, instance_id, step_name),
        )
        if previous_state == dag.QUEUED:
            # A late report of a step queued again after its deadline
            # withdraws it from the queue.
            conn.execute(
                "delete from queue where instance_id = ? and step_name = ?",
                (instance_id, step_name),
            )
        last_task = {
            "workflow_id": key[0],
            "instance_id": instance_id,
            "step_name": step_name,
            "success": state != dag.FAILED,
        }
        conn.execute(
            "update workers set last_task = ? where worker_id = ?",
            (_dumps(last_task), worker_id),
        )
        self._advance(conn, key, instance_id, step_name, state, result, now)

    def _advance(self, conn, key, instance_id, step_name, state, result, now):
        """Queue, cancel or skip what follows a finished step, and close a done run."""
        definition = self._load_definition(conn, key)
        rows = conn.execute(
            "select step_name, state from steps where instance_id = ?", (instance_id,)
        ).fetchall()
        states = {row["step_name"]: row["state"] for row in rows}

        step = definition["steps"][step_name]
        for name in dag.followed_successors(step, state, result):
            if states[name] == dag.PENDING and dag.is_ready(
                definition["steps"][name], states
            ):
                self._enqueue(conn, key, instance_id, name)
                states[name] = dag.QUEUED

        if state == dag.FAILED:
            for name in dag.steps_to_cancel(definition, states):
                conn.execute(
                    "update steps set state = ?, finished_at = ?"
                    " where instance_id = ? and step_name = ?",
                    (dag.CANCELLED, now, instance_id, name),
                )
                states[name] = dag.CANCELLED

        outcome = dag.outcome_if_finished(states)
        if outcome is None:
            return
        conn.execute(
            "update steps set state = ?, finished_at = ?"
            " where instance_id = ? and state = ?",
            (dag.SKIPPED, now, instance_id, dag.PENDING),
        )
        conn.execute(
            "update instances set state = ?, finished_at = ? where instance_id = ?",
            (outcome, now, instance_id),
        )
        log.info(
            "finished workflow=%s@%s instance=%s state=%s",
            *key,
            instance_id,
            outcome,
            extra={"action": "finish", "instance_id": instance_id},
        )

    # Reading runs

    def get_instance(self, instance_id):
        with self._read() as conn:
            row = conn.execute(
                "select * from instances where instance_id = ?", (instance_id,)
            ).fetchone()
            if row is None:
                raise NotFound(f"instance {instance_id!r} not found")
            steps = conn.execute(
                "select * from steps where instance_id = ?", (instance_id,)
            ).fetchall()
            assignments = conn.execute(
                "select * from assignments where instance_id = ?"
                " order by step_name, attempt",
                (instance_id,),
            ).fetchall()
            definition = self._load_definition(
                conn, (row["workflow_id"], row["version"])
            )
        history = {}
        for item in assignments:
            history.setdefault(item["step_name"], []).append(
                {
                    "attempt": item["attempt"],
                    "worker_id": item["worker_id"],
                    "assigned_at": item["assigned_at"],
                    "expires_at": item["expires_at"],
                }
            )
        by_name = {step["step_name"]: step for step in steps}
        record = _instance_summary(row)
        record["steps"] = {
            name: _step_record(by_name[name], history.get(name, []))
            for name in definition["steps"]
        }
        return record

    def list_instances(self, workflow_id, state, offset, limit):
        clauses, params = [], []
        if workflow_id is not None:
            clauses.append("workflow_id = ?")
            params.append(workflow_id)
        if state is not None:
            clauses.append("state = ?")
            params.append(state)
        where = f" where {' and '.join(clauses)}" if clauses else ""
        with self._read() as conn:
            total = conn.execute(
                f"select count(*) from instances{where}", params
            ).fetchone()[0]
            rows = conn.execute(
                f"select * from instances{where}"
                " order by created_at desc, instance_id limit ? offset ?",
                (*params, limit, offset),
            ).fetchall()
        return Page([_instance_summary(row) for row in rows], total)

    def purge_finished(self, finished_before, limit):
        with self._write() as conn:
            rows = conn.execute(
                "select instance_id from instances"
                " where finished_at < ? order by finished_at limit ?",
                (finished_before, limit),
            ).fetchall()
            ids = [(row["instance_id"],) for row in rows]
            for table in ("assignments", "steps", "instances"):
                conn.executemany(f"delete from {table} where instance_id = ?", ids)
        if ids:
            log.info(
                "purged %d instances finished before %.0f",
                len(ids),
                finished_before,
                extra={"action": "purge"},
            )
        return len(ids)

    def purge_workers(self, seen_before, limit):
        with self._write() as conn:
            # _touch_unless_recent and _touch_if_due store last_seen at most
            # once per TOUCH_INTERVAL, so a live worker's may be that much older.
            live_since = self.clock() - self.settings.worker_ttl - TOUCH_INTERVAL
            cutoff = min(seen_before, live_since)
            rows = conn.execute(
                "select worker_id from workers where last_seen < ?"
                " order by last_seen limit ?",
                (cutoff, limit),
            ).fetchall()
            ids = [(row["worker_id"],) for row in rows]
            for table in ("worker_workflows", "workers"):
                conn.executemany(f"delete from {table} where worker_id = ?", ids)
        for (worker_id,) in ids:
            self._touched.pop(worker_id, None)
            self._worker_workflows.pop(worker_id, None)
            self._busy.discard(worker_id)
        if ids:
            log.info(
                "purged %d workers last seen before %.0f",
                len(ids),
                cutoff,
                extra={"action": "purge"},
            )
        return len(ids)


def _rollback(conn):
    """Roll back an open transaction, ignoring a connection too broken to do it."""
    with contextlib.suppress(sqlite3.Error):
        if conn.in_transaction:
            conn.execute("rollback")


def _log_handout(assignment, worker_id, attempt):
    # First handouts come hundreds of times a second under load, and the
    # assignments table records each one. A second attempt means that an
    # assignment expired, so it is logged at INFO.
    log.log(
        logging.DEBUG if attempt == 1 else logging.INFO,
        "handout workflow=%s instance=%s step=%s worker=%s attempt=%d",
        assignment.workflow_id,
        assignment.instance_id,
        assignment.step_name,
        worker_id,
        attempt,
        extra={
            "action": "handout",
            "workflow_id": assignment.workflow_id,
            "instance_id": assignment.instance_id,
            "step_name": assignment.step_name,
            "worker_id": worker_id,
        },
    )


def _instance_summary(row):
    return {
        "instance_id": row["instance_id"],
        "workflow_id": row["workflow_id"],
        "version": row["version"],
        "state": row["state"],
        "inputs": json.loads(row["inputs"]),
        "created_at": row["created_at"],
        "finished_at": row["finished_at"],
    }


def _step_record(row, history):
    return {
        "state": row["state"],
        "attempts": row["attempts"],
        "worker_id": row["worker_id"],
        "assigned_at": row["assigned_at"],
        "expires_at": row["expires_at"],
        "finished_at": row["finished_at"],
        "result": json.loads(row["result"]) if row["result"] is not None else None,
        "assignments": history,
    }
