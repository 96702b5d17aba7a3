"""An existing Flask site with its own flask-smorest API and the broker mounted."""

import os

import flask
import marshmallow as ma
from flask.views import MethodView
from flask_smorest import Api, Blueprint

from fuseline_broker import Broker

pets = Blueprint("pets", __name__, description="The host site's own API")


class PetSchema(ma.Schema):
    name = ma.fields.String(required=True)


@pets.route("/pets")
class Pets(MethodView):
    @pets.response(200, PetSchema(many=True))
    def get(self):
        """List the host's pets"""
        return [{"name": "Rex"}]


def create_site(database=None):
    """Build the host site: a page, its own Api, and the broker under /broker."""
    site = flask.Flask(__name__)
    site.config.update(
        API_TITLE="Host site",
        API_VERSION="1",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        FUSELINE_BROKER_DATABASE=database
        or os.environ.get("FUSELINE_BROKER_DATABASE", "broker.db"),
    )

    @site.route("/")
    def home():
        return "<h1>Host home page</h1>"

    api = Api(site)
    api.register_blueprint(pets)
    Broker(site, url_prefix="/broker")
    return site


app = create_site() if os.environ.get("FUSELINE_BROKER_DATABASE") else None
