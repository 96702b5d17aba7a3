"""The Flask extension that mounts the broker on an application."""

import logging
import os
from dataclasses import dataclass
from http import HTTPStatus
from importlib import resources

import click
import flask
from flask_smorest import Api
from werkzeug.exceptions import HTTPException

from . import __version__, auth, config, logs, retention
from .api import repository, system, worker, workflow
from .api.common import SECURITY_SCHEME, quote
from .crypto import CredentialCipher, generate_key
from .errors import (
    BrokerError,
    DefinitionConflict,
    InvalidWorkflow,
    NotAssigned,
    NotFound,
    StorageUnavailable,
)
from .limits import Limits
from .retention import Retention
from .storage.base import RuntimeStorage, Settings
from .storage.sqlite import SQLiteStorage

log = logging.getLogger(__name__)

BLUEPRINTS = (repository.bp, worker.bp, workflow.bp, system.bp)
BLUEPRINT_NAMES = frozenset(bp.name for bp in BLUEPRINTS)
DATABASE_FILENAME = "fuseline-broker.sqlite3"
API_DESCRIPTION = (
    "Stores fuseline workflow definitions, tracks their runs and hands their "
    "steps to workers. Every error is a JSON object with code, status, message "
    "and, for invalid input, errors."
)

#: HTTP status of each broker error.
ERROR_STATUS = {
    NotFound: 404,
    InvalidWorkflow: 422,
    DefinitionConflict: 409,
    NotAssigned: 409,
    StorageUnavailable: 503,
}


@dataclass
class BrokerState:
    """Per-application broker state, stored in ``app.extensions["fuseline_broker"]``."""

    storage: RuntimeStorage
    settings: Settings
    url_prefix: str
    max_content_length: int
    limits: Limits
    tokens: auth.TokenTable
    retention: Retention


class BrokerApi(Api):
    """flask-smorest Api whose JSON error handler covers the broker's URLs only.

    flask-smorest registers its handler for every HTTPException of the whole
    application. A host application keeps its own error pages: errors
    outside the broker's URL prefix go to the handler registered before the
    broker, or to Flask's default.
    """

    def __init__(self, app, url_prefix):
        self.url_prefix = url_prefix
        self._host_handler = None
        super().__init__(app, config_prefix=config.PREFIX)

    def _register_error_handlers(self):
        handlers = self._app.error_handler_spec.get(None, {}).get(None, {})
        self._host_handler = handlers.get(HTTPException)
        self._app.register_error_handler(HTTPException, self.handle_http_exception)

    def handle_http_exception(self, error):
        if self._owns_request():
            if error.code not in (401, 403):  # auth logs its own rejections
                _log_rejection(error.code, _error_message(error))
            response = flask.make_response(super().handle_http_exception(error))
            valid_methods = getattr(error, "valid_methods", None)
            if valid_methods:
                # A 405 must list the methods the resource allows.
                response.headers["Allow"] = ", ".join(valid_methods)
            return response
        if self._host_handler is not None:
            return self._host_handler(error)
        return error

    def _owns_request(self):
        if flask.request.blueprint in BLUEPRINT_NAMES:
            return True
        path = flask.request.path
        prefix = self.url_prefix
        return not prefix or path == prefix or path.startswith(prefix + "/")


class Broker:
    """Mount the broker's HTTP API on a Flask application.

    ``url_prefix`` puts every broker route, the OpenAPI document and the
    Swagger UI under that path, so the broker can sit beside the routes of
    an existing site. Settings are read from ``app.config`` keys named in
    :mod:`fuseline_broker.config`. A ready ``storage`` may be passed in
    place of the SQLite file named by the configuration.
    """

    def __init__(self, app=None, *, url_prefix="", storage=None):
        self.url_prefix = url_prefix
        self.storage = storage
        if app is not None:
            self.init_app(app)

    def init_app(self, app, *, url_prefix=None):
        """Register the broker's routes, docs, error handlers and CLI on ``app``."""
        prefix = _normalize_prefix(
            self.url_prefix if url_prefix is None else url_prefix
        )
        values = config.resolve(app.config)
        settings = Settings(
            worker_ttl=values["WORKER_TTL"],
            step_timeout=values["STEP_TIMEOUT"],
            step_grace=values["STEP_GRACE"],
            max_attempts=values["MAX_ATTEMPTS"],
        )
        tokens = auth.TokenTable(values["ADMIN_TOKENS"], values["WORKER_TOKENS"])
        storage = self.storage or _open_sqlite(app, values, settings)
        storage.initialize()
        app.extensions["fuseline_broker"] = BrokerState(
            storage=storage,
            settings=settings,
            url_prefix=prefix,
            max_content_length=values["MAX_CONTENT_LENGTH"],
            limits=Limits(
                max_name_length=values["MAX_NAME_LENGTH"],
                max_steps=values["MAX_STEPS"],
                max_result_bytes=values["MAX_RESULT_BYTES"],
                max_json_depth=values["MAX_JSON_DEPTH"],
            ),
            tokens=tokens,
            retention=Retention(values["RETENTION"], values["PURGE_BATCH"]),
        )

        _configure_openapi(app, prefix)
        api = BrokerApi(app, prefix)
        api.spec.components.security_scheme(
            SECURITY_SCHEME, {"type": "http", "scheme": "bearer"}
        )
        for blueprint in BLUEPRINTS:
            api.register_blueprint(blueprint, url_prefix=prefix or None)
        app.register_blueprint(_swagger_assets_blueprint(prefix))

        for error_class in ERROR_STATUS:
            app.register_error_handler(error_class, _handle_broker_error)
        app.before_request(_before_broker_request)
        app.wsgi_app = auth.PathTokenMiddleware(app.wsgi_app, prefix)
        app.cli.add_command(_cli_group())

        secrets = tokens.secrets() + (
            [values["SECRET_KEY"]] if values["SECRET_KEY"] else []
        )
        logs.install_filters(secrets)
        if not tokens.enabled:
            log.warning(
                "no access tokens configured: the broker at %s/ is open to every "
                "client that can reach it, repository credentials included",
                prefix,
            )
        return api


def _normalize_prefix(prefix):
    prefix = (prefix or "").strip()
    if not prefix or prefix == "/":
        return ""
    return "/" + prefix.strip("/")


def _open_sqlite(app, values, settings):
    path = values["DATABASE"] or os.path.join(app.instance_path, DATABASE_FILENAME)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    log.info("storing broker state in SQLite file %s", path)
    key = values["SECRET_KEY"]
    return SQLiteStorage(
        path,
        settings,
        busy_timeout=values["BUSY_TIMEOUT"],
        synchronous=values["SQLITE_SYNCHRONOUS"],
        cipher=CredentialCipher(key) if key else None,
    )


def _configure_openapi(app, prefix):
    """Set flask-smorest's options, under the broker's own config prefix."""
    defaults = {
        "API_TITLE": "fuseline-broker",
        "API_VERSION": __version__,
        "OPENAPI_VERSION": "3.0.3",
        "OPENAPI_URL_PREFIX": prefix or "/",
        "OPENAPI_JSON_PATH": "openapi.json",
        "OPENAPI_SWAGGER_UI_PATH": "docs",
        "OPENAPI_SWAGGER_UI_URL": f"{prefix}/docs/assets/",
        "API_SPEC_OPTIONS": {"info": {"description": API_DESCRIPTION}},
    }
    for key, value in defaults.items():
        app.config.setdefault(config.PREFIX + key, value)


def _swagger_assets_blueprint(prefix):
    """Serve Swagger UI's files from the installed package, so /docs works offline."""
    directory = resources.files("flask_swagger_ui") / "dist"
    assets = flask.Blueprint(
        "fuseline_broker_swagger_assets",
        __name__,
        static_folder=str(directory),
        static_url_path="/",
        url_prefix=f"{prefix}/docs/assets",
    )
    return assets


def _handle_broker_error(error):
    status = next(code for cls, code in ERROR_STATUS.items() if isinstance(error, cls))
    log_level = logging.ERROR if status >= 500 else logging.WARNING
    log.log(
        log_level,
        "rejected %s %s with %d: %s",
        flask.request.method,
        flask.request.path,
        status,
        error,
        extra={"action": "reject"},
    )
    body = {
        "code": status,
        "status": HTTPStatus(status).phrase,
        "message": str(error),
    }
    return body, status


def _log_rejection(status, message):
    log.log(
        logging.ERROR if status >= 500 else logging.WARNING,
        "rejected %s %s with %d: %s",
        flask.request.method,
        flask.request.path,
        status,
        message,
        extra={"action": "reject", "worker_id": flask.request.args.get("worker_id")},
    )


def _error_message(error):
    data = getattr(error, "data", None) or {}
    return data.get("message") or error.description


def _before_broker_request():
    if flask.request.blueprint not in BLUEPRINT_NAMES:
        return
    state = flask.current_app.extensions["fuseline_broker"]
    flask.request.max_content_length = state.max_content_length
    auth.check_request(state.tokens)


def _count(number, noun):
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _cli_group():
    group = click.Group("broker", help="fuseline-broker commands.")

    @group.command("init-db")
    @flask.cli.with_appcontext
    def init_db():
        """Create the broker's database and schema if they are missing."""
        storage = flask.current_app.extensions["fuseline_broker"].storage
        storage.initialize()
        click.echo(f"database ready: {getattr(storage, 'path', storage)}")

    @group.command("settings")
    @flask.cli.with_appcontext
    def show_settings():
        """Print every broker setting with its current value; secrets masked."""
        values = config.resolve(flask.current_app.config)
        storage = flask.current_app.extensions["fuseline_broker"].storage
        values["DATABASE"] = getattr(storage, "path", values["DATABASE"])
        for option in config.OPTIONS:
            value = values[option.name]
            if option.secret and value:
                value = logs.MASK
            click.echo(f"{option.key} = {quote(value)}")

    @group.command("purge")
    @click.option(
        "--older-than",
        type=float,
        default=None,
        help="Age in seconds of the newest finished instance to delete "
        "[default: FUSELINE_BROKER_RETENTION].",
    )
    @click.option(
        "--share",
        type=click.FloatRange(0, 1, min_open=True),
        default=retention.COMMAND_SHARE,
        show_default=True,
        help="Maximum share of its run time that the purge spends deleting. "
        "It sleeps the rest, so the broker keeps its pace. 1 leaves only the "
        "shortest pause (20 ms) between transactions.",
    )
    @flask.cli.with_appcontext
    def purge(older_than, share):
        """Delete finished instances and stopped workers past the retention age."""
        state = flask.current_app.extensions["fuseline_broker"]
        purged = state.retention.purge_all(state.storage, older_than, share)
        click.echo(f"purged {_count(purged.instances, 'finished instance')}")
        click.echo(
            f"purged {_count(purged.workers, 'worker')} last seen before the cutoff"
        )

    @group.command("generate-key")
    def generate_secret_key():
        """Print a new key for FUSELINE_BROKER_SECRET_KEY."""
        click.echo(generate_key())

    return group


__all__ = ["Broker", "BrokerError"]
