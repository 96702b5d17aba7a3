"""Optional bearer tokens with two roles, ``admin`` and ``worker``.

A token travels in an ``Authorization: Bearer TOKEN`` header, or, for
fuseline workers whose HTTP client sends no headers, as a path prefix:
a worker started with ``BROKER_URL=http://host:8000/t/TOKEN`` reaches
every endpoint under ``/t/TOKEN``. With no token configured the broker is
open to anyone who can reach it.
"""

import hmac
import logging

import flask
from flask_smorest import abort

log = logging.getLogger(__name__)

ADMIN = "admin"
WORKER = "worker"
PUBLIC = "public"
#: The roles that may call an endpoint of each required role.
ALLOWED = {PUBLIC: None, WORKER: {WORKER, ADMIN}, ADMIN: {ADMIN}}
ENVIRON_TOKEN = "fuseline_broker.path_token"
TOKEN_SEGMENT = "t"
MASK = "***"
REALM = "fuseline-broker"


def requires(role):
    """Mark a view as callable by ``role`` (or a stronger one)."""

    def mark(view):
        view._broker_role = role
        return view

    return mark


class TokenTable:
    """The configured tokens, checked in constant time."""

    def __init__(self, admin_tokens=(), worker_tokens=()):
        self.entries = [(t.encode(), ADMIN) for t in admin_tokens] + [
            (t.encode(), WORKER) for t in worker_tokens
        ]

    @property
    def enabled(self):
        return bool(self.entries)

    def role_of(self, token):
        """Return the role of a token, or None; every entry is always compared."""
        candidate = token.encode()
        found = None
        for secret, role in self.entries:
            # No early exit, so the time taken does not tell which entry matched.
            if hmac.compare_digest(secret, candidate) and found is None:
                found = role
        return found

    def secrets(self):
        """Return every token, for masking in log lines."""
        return [secret.decode() for secret, _ in self.entries]


def required_role():
    """Return the role the matched view requires; unmarked views require admin."""
    view = flask.current_app.view_functions.get(flask.request.endpoint)
    view_class = getattr(view, "view_class", None)
    if view_class is not None:
        # A MethodView's route function is generic: the mark is on the method.
        view = getattr(view_class, flask.request.method.lower(), None)
    return getattr(view, "_broker_role", ADMIN)


def check_request(tokens):
    """Abort with 401 or 403 unless the request may call the matched view."""
    required = required_role()
    if not tokens.enabled:
        flask.g.broker_role = ADMIN
        return
    if required == PUBLIC:
        return
    token = flask.request.environ.get(ENVIRON_TOKEN) or _bearer_token()
    challenge = f'Bearer realm="{REALM}"'
    if token is None:
        _reject(401, "missing bearer token", challenge)
    role = tokens.role_of(token)
    if role is None:
        _reject(401, "invalid token", f'{challenge}, error="invalid_token"')
    if role not in ALLOWED[required]:
        _reject(
            403,
            f"a {role} token may not call {flask.request.method} "
            f"{flask.request.path}; it needs an {required} token",
        )
    flask.g.broker_role = role


def require_admin(what):
    """Abort with 403 unless the request was made with an admin token."""
    role = flask.g.get("broker_role")
    if role is not None and role != ADMIN:
        _reject(403, f"{what} needs an admin token")


def _bearer_token():
    header = flask.request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def _reject(status, message, challenge=None):
    log.warning(
        "rejected %s %s with %d: %s",
        flask.request.method,
        flask.request.path,
        status,
        message,
        extra={"action": "reject"},
    )
    headers = {"WWW-Authenticate": challenge} if challenge else {}
    abort(status, message=message, headers=headers)


class PathTokenMiddleware:
    """Move a ``/t/TOKEN`` path prefix into the WSGI environ and mask it.

    The token is removed from ``PATH_INFO`` before routing, and replaced by
    ``***`` in ``RAW_URI`` and ``REQUEST_URI``, which gunicorn's access log
    prints, so no log line carries it.
    """

    def __init__(self, wsgi_app, url_prefix):
        self.wsgi_app = wsgi_app
        self.url_prefix = url_prefix
        self.marker = f"{url_prefix}/{TOKEN_SEGMENT}/"

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path.startswith(self.marker):
            token, slash, rest = path[len(self.marker) :].partition("/")
            if token:
                environ[ENVIRON_TOKEN] = token
                environ["PATH_INFO"] = self.url_prefix + slash + rest
                for key in ("RAW_URI", "REQUEST_URI"):
                    if key in environ:
                        environ[key] = environ[key].replace(token, MASK)
        return self.wsgi_app(environ, start_response)
