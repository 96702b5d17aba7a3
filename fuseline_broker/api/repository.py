"""Git repositories that workers clone at start-up."""

from flask.views import MethodView

from .. import auth
from .common import BrokerBlueprint, access, json_response, no_content, storage
from .schemas import RepositoryQuerySchema, RepositorySchema

bp = BrokerBlueprint(
    "repository",
    __name__,
    description="Git repositories with workflow entry points and credentials",
)

#: Shown in listings in place of each credential value.
MASK = "********"


def mask_credentials(record):
    """Return a copy of a repository record with every credential value hidden."""
    return {**record, "credentials": {key: MASK for key in record["credentials"]}}


@bp.route("/repository/register")
class RepositoryRegister(MethodView):
    @access(bp, auth.ADMIN, errors=(400, 413, 415, 503))
    @bp.arguments(RepositorySchema())
    @bp.response(204)
    def post(self, record):
        """Store a repository, replacing any record of the same name"""
        storage().save_repository(record)
        return no_content()


@bp.route("/repository")
class Repositories(MethodView):
    @access(bp, auth.WORKER, errors=(404, 503))
    @bp.arguments(RepositoryQuerySchema(), location="query")
    @bp.response(
        200,
        {
            "oneOf": [
                {"$ref": "#/components/schemas/Repository"},
                {
                    "type": "array",
                    "items": {"$ref": "#/components/schemas/Repository"},
                },
            ]
        },
        description=(
            "With name: that repository with its credentials. Without: a page "
            "of repositories ordered by name, credential values masked."
        ),
    )
    def get(self, query):
        """Read one repository by name, or list a page of them"""
        if "name" in query:
            return json_response(storage().get_repository(query["name"]))
        auth.require_admin("listing repositories")
        size = query["page_size"]
        page = storage().list_repositories((query["page"] - 1) * size, size)
        response = json_response([mask_credentials(r) for r in page.items])
        response.headers["X-Total-Count"] = str(page.total)
        return response
