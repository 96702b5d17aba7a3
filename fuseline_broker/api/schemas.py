"""marshmallow schemas of every request and response body."""

import json

import marshmallow as ma
from marshmallow import fields, validate

from .. import dag, limits

#: ``package.module:object`` as Python's entry points write it; an
#: identifier is a letter or underscore, then letters, digits or underscores.
IDENTIFIER = r"[^\W\d]\w*"
ENTRY_POINT_PATTERN = rf"^{IDENTIFIER}(\.{IDENTIFIER})*:{IDENTIFIER}(\.{IDENTIFIER})*$"
INSTANCE_STATES = ("RUNNING", dag.SUCCEEDED, dag.FAILED)
STEP_STATES = (
    dag.PENDING,
    dag.QUEUED,
    dag.RUNNING,
    dag.SUCCEEDED,
    dag.FAILED,
    dag.CANCELLED,
    dag.SKIPPED,
)


NAME_DESCRIPTION = "At most FUSELINE_BROKER_MAX_NAME_LENGTH characters (255)."


def Name(required=True, **kwargs):  # noqa: N802 - reads as a field type
    """Return a non-empty string field whose maximum length is configurable."""
    return fields.String(
        required=required,
        validate=[validate.Length(min=1), limits.check_name_length],
        metadata={"description": NAME_DESCRIPTION},
        **kwargs,
    )


class PolicySchema(ma.Schema):
    """A step or workflow policy, such as ``retry`` or ``timeout``."""

    name = Name()
    config = fields.Dict(keys=fields.String(), load_default=dict)

    @ma.validates_schema
    def check_known_policies(self, data, **kwargs):
        """Check the settings of the policies whose deadline the broker computes."""
        config = data.get("config") or {}
        if data.get("name") == "timeout":
            _check_number(config, "seconds", 0, MAX_POLICY_SECONDS, exclusive=True)
        elif data.get("name") == "retry":
            _check_number(config, "max_retries", 1, MAX_RETRIES, integer=True)
            if "wait" in config:
                _check_number(config, "wait", 0, MAX_POLICY_SECONDS)


#: Upper bounds on the policy settings that go into a step's deadline, so
#: the deadline stays a finite float: about 31 years, and a million tries.
MAX_POLICY_SECONDS = 10**9
MAX_RETRIES = 10**6


def _check_number(config, key, minimum, maximum, *, exclusive=False, integer=False):
    value = config.get(key)
    kind = "an integer" if integer else "a number"
    valid = isinstance(value, int if integer else (int, float)) and not isinstance(
        value, bool
    )
    if valid:
        above = value > minimum if exclusive else value >= minimum
        valid = above and value <= maximum
    if not valid:
        low = f"> {minimum}" if exclusive else f">= {minimum}"
        raise ma.ValidationError(
            f"config.{key} must be {kind} {low} and <= {maximum}, received {value!r}",
            "config",
        )


class StepSchema(ma.Schema):
    """One node of a workflow graph."""

    name = Name()
    successors = fields.Dict(
        keys=Name(),
        values=fields.List(fields.String()),
        load_default=dict,
        metadata={"description": "Action name to the steps that follow it."},
    )
    predecessors = fields.List(fields.String(), load_default=list)
    or_groups = fields.Dict(
        keys=fields.String(),
        values=fields.List(fields.String()),
        load_default=dict,
        metadata={"description": "Group name to predecessors of which one suffices."},
    )
    policies = fields.List(fields.Nested(PolicySchema), load_default=list)


class WorkflowSchema(ma.Schema):
    """A versioned workflow definition, as fuseline serializes it."""

    workflow_id = Name()
    version = Name()
    steps = fields.Dict(
        keys=Name(),
        values=fields.Nested(StepSchema),
        required=True,
        metadata={"description": "At most FUSELINE_BROKER_MAX_STEPS steps (1000)."},
    )
    outputs = fields.List(fields.String(), load_default=list)
    policies = fields.List(fields.Nested(PolicySchema), load_default=list)

    @ma.validates("steps")
    def check_step_count(self, steps, **kwargs):
        """Reject a definition with more steps than the configured maximum."""
        limit = limits.current().max_steps
        if len(steps) > limit:
            raise ma.ValidationError(f"has {len(steps)} steps; the maximum is {limit}")


class DispatchSchema(ma.Schema):
    """A request to start one run of a workflow."""

    workflow = fields.Nested(WorkflowSchema, required=True)
    inputs = fields.Dict(
        keys=fields.String(),
        allow_none=True,
        load_default=None,
        validate=limits.check_depth,
    )


class ReportSchema(ma.Schema):
    """A worker's report of a step it ran."""

    workflow_id = Name()
    instance_id = Name()
    step_name = Name()
    state = fields.String(
        required=True,
        validate=validate.OneOf(
            dag.REPORTABLE_STATES,
            error="state must be one of {choices}, received {input!r}",
        ),
    )
    result = fields.Raw(
        allow_none=True,
        load_default=None,
        metadata={
            "description": "Any JSON value, at most FUSELINE_BROKER_MAX_RESULT_BYTES "
            "as compact JSON and FUSELINE_BROKER_MAX_JSON_DEPTH levels deep."
        },
    )

    @ma.validates("result")
    def check_result_size(self, result, **kwargs):
        """Reject a result larger or deeper than the configured maximum."""
        limits.check_depth(result)
        size = len(json.dumps(result, separators=(",", ":")).encode())
        limit = limits.current().max_result_bytes
        if size > limit:
            raise ma.ValidationError(f"is {size} bytes as JSON; the maximum is {limit}")


class ReportOutcomeSchema(ma.Schema):
    """Whether a report was applied, and why not when it was not."""

    applied = fields.Boolean(required=True)
    reason = fields.String(
        metadata={"description": "Present when applied is false."},
    )


class WorkerIdQuerySchema(ma.Schema):
    """The worker id that every worker call carries in its query string."""

    worker_id = Name()

    def quick_load(self, args):
        """Return what ``load`` would for a well-formed query, else None.

        Every keep-alive, poll and report carries this query, and this check
        takes about a third of the time of a full webargs and marshmallow
        pass. A query without exactly one valid ``worker_id`` (other
        parameters are ignored, as ``load`` ignores them) gets None, and the
        caller then runs ``load`` for the usual result or error message.
        """
        values = args.getlist("worker_id")
        if len(values) != 1:
            return None
        worker_id = values[0]
        try:
            # The field's own validators, so the rules live in one place.
            # marshmallow also counts a validator that returns False as failed.
            for check in self.fields["worker_id"].validators:
                if check(worker_id) is False:
                    return None
        except ma.ValidationError:
            return None
        return {"worker_id": worker_id}


#: Highest page number; keeps the row offset within SQLite's 64-bit integers.
MAX_PAGE = 10**9


class PageQuerySchema(ma.Schema):
    """Page number and size of a listing."""

    page = fields.Integer(load_default=1, validate=validate.Range(min=1, max=MAX_PAGE))
    page_size = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))


class RepositoryQuerySchema(PageQuerySchema):
    """Either a repository name, or a page of the listing."""

    name = Name(required=False)


class RepositorySchema(ma.Schema):
    """A git repository that workers clone, with the entry points it provides."""

    name = Name()
    url = fields.String(required=True, validate=validate.Length(1, 2048))
    workflows = fields.List(
        fields.String(
            validate=validate.Regexp(
                ENTRY_POINT_PATTERN,
                error="workflow entry point must be module:object, received {input!r}",
            )
        ),
        required=True,
    )
    credentials = fields.Dict(
        keys=fields.String(), values=fields.String(), load_default=dict
    )


class WorkflowEntrySchema(ma.Schema):
    """One workflow entry point of a registered repository."""

    repository = fields.String(required=True)
    workflow = fields.String(required=True)


class LastTaskSchema(ma.Schema):
    """The last step a worker reported."""

    workflow_id = fields.String(required=True)
    instance_id = fields.String(required=True)
    step_name = fields.String(required=True)
    success = fields.Boolean(required=True)


class WorkerSchema(ma.Schema):
    """A live worker."""

    worker_id = fields.String(required=True)
    connected_at = fields.Float(required=True)
    last_seen = fields.Float(required=True)
    last_task = fields.Nested(LastTaskSchema, allow_none=True, required=True)


class PayloadSchema(ma.Schema):
    """The inputs of a handed-out step."""

    workflow_inputs = fields.Dict(required=True)
    results = fields.Dict(
        required=True,
        metadata={"description": "Result of each finished predecessor by name."},
    )


class AssignmentSchema(ma.Schema):
    """A step handed to a worker; exactly these six keys."""

    workflow_id = fields.String(required=True)
    instance_id = fields.String(required=True)
    step_name = fields.String(required=True)
    payload = fields.Nested(PayloadSchema, required=True)
    assigned_at = fields.Float(required=True, metadata={"description": "Unix time"})
    expires_at = fields.Float(required=True, metadata={"description": "Unix time"})


class InstanceQuerySchema(PageQuerySchema):
    """Filters of the instance listing."""

    workflow_id = Name(required=False)
    state = fields.String(validate=validate.OneOf(INSTANCE_STATES))


class AssignmentRecordSchema(ma.Schema):
    """One handout of a step."""

    attempt = fields.Integer(required=True)
    worker_id = fields.String(required=True)
    assigned_at = fields.Float(required=True)
    expires_at = fields.Float(required=True)


class StepRecordSchema(ma.Schema):
    """The state of one step of an instance."""

    state = fields.String(required=True, validate=validate.OneOf(STEP_STATES))
    attempts = fields.Integer(required=True)
    worker_id = fields.String(allow_none=True, required=True)
    assigned_at = fields.Float(allow_none=True, required=True)
    expires_at = fields.Float(allow_none=True, required=True)
    finished_at = fields.Float(allow_none=True, required=True)
    result = fields.Raw(allow_none=True, required=True)
    assignments = fields.List(fields.Nested(AssignmentRecordSchema), required=True)


class InstanceSummarySchema(ma.Schema):
    """An instance without its steps."""

    instance_id = fields.String(required=True)
    workflow_id = fields.String(required=True)
    version = fields.String(required=True)
    state = fields.String(required=True, validate=validate.OneOf(INSTANCE_STATES))
    inputs = fields.Dict(allow_none=True, required=True)
    created_at = fields.Float(required=True)
    finished_at = fields.Float(allow_none=True, required=True)


class InstanceSchema(InstanceSummarySchema):
    """An instance with the state of each of its steps."""

    steps = fields.Dict(
        keys=fields.String(), values=fields.Nested(StepRecordSchema), required=True
    )


class StatusSchema(ma.Schema):
    """Liveness of the broker."""

    status = fields.String(required=True)
