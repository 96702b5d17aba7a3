"""Health of the broker."""

from flask.views import MethodView

from .common import BrokerBlueprint, json_response
from .schemas import StatusSchema

bp = BrokerBlueprint("system", __name__, description="Health of the broker")


@bp.route("/status")
class Status(MethodView):
    @bp.response(200, StatusSchema)
    def get(self):
        """Tell that the broker is up"""
        return json_response({"status": "ok"})
