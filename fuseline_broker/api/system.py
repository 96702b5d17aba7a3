"""Health of the broker."""

from flask.views import MethodView

from .. import auth
from .common import BrokerBlueprint, access, json_response
from .schemas import StatusSchema

bp = BrokerBlueprint("system", __name__, description="Health of the broker")


@bp.route("/status")
class Status(MethodView):
    @access(bp, auth.PUBLIC)
    @bp.response(200, StatusSchema)
    def get(self):
        """Tell that the broker is up"""
        return json_response({"status": "ok"})
