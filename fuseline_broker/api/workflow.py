"""Dispatching runs, handing out steps, taking reports, reading instances."""

import logging

from flask.views import MethodView

from .. import auth
from .common import (
    BrokerBlueprint,
    access,
    json_response,
    no_content,
    retention,
    storage,
)
from .schemas import (
    AssignmentSchema,
    DispatchSchema,
    InstanceQuerySchema,
    InstanceSchema,
    InstanceSummarySchema,
    ReportOutcomeSchema,
    ReportSchema,
    WorkerIdQuerySchema,
    WorkflowEntrySchema,
)

log = logging.getLogger(__name__)

bp = BrokerBlueprint(
    "workflow", __name__, description="Workflow runs and the steps of each run"
)


@bp.route("/workflow/dispatch")
class Dispatch(MethodView):
    @access(bp, auth.WORKER, errors=(400, 409, 413, 415, 503))
    @bp.arguments(DispatchSchema())
    @bp.response(
        200,
        {"type": "string", "description": "The new instance id"},
        description="The new instance id, as a bare JSON string.",
    )
    def post(self, request):
        """Store a workflow definition and start a run of it"""
        instance_id = storage().dispatch(request["workflow"], request["inputs"])
        retention().purge_some(storage())
        return json_response(instance_id)


@bp.route("/workflow/step")
class Step(MethodView):
    @access(bp, auth.WORKER, errors=(404, 503))
    @bp.arguments(WorkerIdQuerySchema(), location="query")
    @bp.response(200, AssignmentSchema)
    @bp.alt_response(204, description="No step is queued for this worker.")
    def get(self, query):
        """Take the oldest queued step of a workflow this worker registered"""
        assignment = storage().take_step(query["worker_id"])
        if assignment is None:
            return no_content()
        return json_response(assignment.to_wire())

    @access(bp, auth.WORKER, errors=(400, 404, 409, 413, 415, 503))
    @bp.arguments(WorkerIdQuerySchema(), location="query")
    @bp.arguments(ReportSchema())
    @bp.response(
        200,
        ReportOutcomeSchema,
        description=(
            "applied is false when the report came too late (the step was "
            "handed to another worker) or was already applied; nothing changed."
        ),
    )
    def post(self, query, report):
        """Report the outcome of a step assigned to this worker"""
        outcome = storage().report_step(query["worker_id"], report)
        body = {"applied": outcome.applied}
        if outcome.reason is not None:
            body["reason"] = outcome.reason
        return json_response(body)


@bp.route("/workflows")
class WorkflowEntries(MethodView):
    @access(bp, auth.ADMIN, errors=(503,))
    @bp.response(200, WorkflowEntrySchema(many=True))
    def get(self):
        """List the workflow entry points of every registered repository"""
        return json_response(storage().list_workflow_entries())


@bp.route("/workflow/instances")
class Instances(MethodView):
    @access(bp, auth.ADMIN, errors=(503,))
    @bp.arguments(InstanceQuerySchema(), location="query")
    @bp.response(200, InstanceSummarySchema(many=True))
    def get(self, query):
        """List instances, newest first"""
        size = query["page_size"]
        page = storage().list_instances(
            query.get("workflow_id"),
            query.get("state"),
            (query["page"] - 1) * size,
            size,
        )
        response = json_response(page.items)
        response.headers["X-Total-Count"] = str(page.total)
        return response


@bp.route("/workflow/instances/<string:instance_id>")
class InstanceById(MethodView):
    @access(bp, auth.ADMIN, errors=(404, 503))
    @bp.response(200, InstanceSchema)
    def get(self, instance_id):
        """Show an instance with the state, times and result of every step"""
        return json_response(storage().get_instance(instance_id))
