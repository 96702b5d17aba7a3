-- Schema of the SQLite storage. Every statement is idempotent, so the
-- storage runs this script on each start. Times are Unix seconds (REAL);
-- JSON values are stored as text.

create table if not exists workflows (
    workflow_id text not null,
    version text not null,
    definition text not null,
    registered_at real not null,
    primary key (workflow_id, version)
) without rowid;

create table if not exists repositories (
    name text primary key,
    url text not null,
    workflows text not null,
    credentials text not null,
    updated_at real not null
) without rowid;

create table if not exists workers (
    worker_id text primary key,
    connected_at real not null,
    last_seen real not null,
    last_task text
) without rowid;
create index if not exists workers_by_last_seen on workers (last_seen);

create table if not exists worker_workflows (
    worker_id text not null,
    workflow_id text not null,
    version text not null,
    primary key (worker_id, workflow_id, version)
) without rowid;

create table if not exists instances (
    instance_id text primary key,
    workflow_id text not null,
    version text not null,
    state text not null,
    inputs text not null,
    created_at real not null,
    finished_at real
) without rowid;
create index if not exists instances_by_created on instances (created_at);
create index if not exists instances_by_workflow
    on instances (workflow_id, created_at);
create index if not exists instances_by_state on instances (state, created_at);
create index if not exists instances_by_workflow_state
    on instances (workflow_id, state, created_at);
create index if not exists instances_by_finished
    on instances (finished_at) where finished_at is not null;

-- state is one of dag.py's step states. worker_id is the holder of the
-- latest assignment. It stays set after that assignment expires, so that a
-- late report from the holder can still be applied. timed_out is 1 when the
-- broker, not a worker, failed the step.
create table if not exists steps (
    instance_id text not null,
    step_name text not null,
    state text not null,
    attempts integer not null default 0,
    worker_id text,
    assigned_at real,
    expires_at real,
    finished_at real,
    result text,
    timed_out integer not null default 0,
    primary key (instance_id, step_name)
) without rowid;
create index if not exists steps_running_by_expiry
    on steps (expires_at) where state = 'RUNNING';

-- Steps ready to be handed out, oldest first. seq never goes back, so the
-- order of handout is the order of queueing.
create table if not exists queue (
    seq integer primary key autoincrement,
    workflow_id text not null,
    version text not null,
    instance_id text not null,
    step_name text not null
);
create index if not exists queue_by_workflow on queue (workflow_id, version, seq);
create unique index if not exists queue_by_step on queue (instance_id, step_name);

-- Every handout of every step, kept to distinguish a report from an earlier
-- holder from a report by a worker that never held the step.
create table if not exists assignments (
    instance_id text not null,
    step_name text not null,
    attempt integer not null,
    worker_id text not null,
    assigned_at real not null,
    expires_at real not null,
    primary key (instance_id, step_name, attempt)
) without rowid;
