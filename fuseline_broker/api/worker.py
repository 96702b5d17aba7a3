"""Worker registration, heartbeats and the list of live workers."""

from flask.views import MethodView

from .. import auth
from .common import BrokerBlueprint, access, json_response, no_content, storage
from .schemas import WorkerIdQuerySchema, WorkerSchema, WorkflowSchema

bp = BrokerBlueprint(
    "worker", __name__, description="Workers that take and run workflow steps"
)


@bp.route("/worker/register")
class WorkerRegister(MethodView):
    @access(bp, auth.WORKER, errors=(400, 409, 413, 415, 503))
    @bp.arguments(WorkflowSchema(many=True))
    @bp.response(
        200,
        {"type": "string", "description": "The new worker id"},
        description="The new worker id, as a bare JSON string.",
    )
    def post(self, definitions):
        """Register a worker and the workflow versions it can run"""
        return json_response(storage().register_worker(definitions))


@bp.route("/worker/keep-alive")
class WorkerKeepAlive(MethodView):
    @access(bp, auth.WORKER, errors=(404, 503))
    @bp.arguments(WorkerIdQuerySchema(), location="query")
    @bp.response(204)
    def post(self, query):
        """Record that a worker is alive; the body is ignored"""
        storage().touch_worker(query["worker_id"])
        return no_content()


@bp.route("/workers")
class Workers(MethodView):
    @access(bp, auth.ADMIN, errors=(503,))
    @bp.response(200, WorkerSchema(many=True))
    def get(self):
        """List the workers seen within the worker TTL"""
        return json_response(storage().list_workers())
