"""Request parsing and error helpers shared by every broker blueprint."""

import json
import math

import flask
from flask_smorest import Blueprint, abort
from webargs import core
from webargs.flaskparser import FlaskParser

from .. import auth

#: Name of the bearer security scheme in the OpenAPI document.
SECURITY_SCHEME = "bearerAuth"

#: Maximum length of a rejected value quoted back in an error message.
MAX_QUOTED_VALUE = 80
#: Fields whose received values are never quoted in an error message.
SECRET_FIELDS = frozenset({"credentials"})


class DuplicateKeyError(ValueError):
    """A JSON object in the request body repeats a key."""


def _reject_duplicate_keys(pairs):
    mapping = {}
    for key, value in pairs:
        if key in mapping:
            raise DuplicateKeyError(f"duplicate key {key!r} in a JSON object")
        mapping[key] = value
    return mapping


class NonFiniteNumberError(ValueError):
    """A JSON number that is NaN, infinite or too large for a float."""


def _reject_constant(name):
    raise NonFiniteNumberError(f"{name} is not a JSON number")


def _parse_finite_float(text):
    value = float(text)
    if not math.isfinite(value):
        raise NonFiniteNumberError(f"{text} is too large for a finite number")
    return value


def quote(value):
    """Return a value as short JSON (or repr if it is not JSON) for a message."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    if len(text) > MAX_QUOTED_VALUE:
        text = text[: MAX_QUOTED_VALUE - 3] + "..."
    return text


class BrokerParser(FlaskParser):
    """webargs parser that explains every rejected body in its error message.

    Unlike the stock parser, it rejects a body sent with a non-JSON content
    type (415) instead of ignoring it. It rejects repeated keys in a JSON
    object, because two steps of the same name would otherwise silently
    merge. Its messages name the offending values.
    """

    def parse(self, argmap, req=None, *, location=None, **kwargs):
        """Parse as webargs does, through the schema's ``quick_load`` if it has one.

        ``quick_load`` takes the query arguments and returns the loaded
        data, or None to leave the request to the full parse.
        """
        if location == "query" and hasattr(argmap, "quick_load"):
            data = argmap.quick_load((req or flask.request).args)
            if data is not None:
                return data
        return super().parse(argmap, req, location=location, **kwargs)

    def _raw_load_json(self, req):
        data = req.get_data(cache=True)
        if not data:
            return core.missing
        if not req.is_json:
            abort(
                415,
                message=(
                    f"request body must be JSON with Content-Type "
                    f"application/json, received Content-Type {quote(req.mimetype)}"
                ),
            )
        try:
            value = json.loads(
                data,
                object_pairs_hook=_reject_duplicate_keys,
                parse_constant=_reject_constant,
                parse_float=_parse_finite_float,
            )
        except (DuplicateKeyError, NonFiniteNumberError) as exc:
            abort(400, message=f"invalid JSON body: {exc}")
        except RecursionError:
            abort(400, message="invalid JSON body: lists and objects nest too deeply")
        # json.loads accepts a lone UTF-16 surrogate escape such as "\ud800",
        # which no UTF-8 text (and so no SQLite text) can hold. The decoder
        # rejects an unescaped surrogate in every encoding, so a body without
        # a backslash cannot carry one.
        if b"\\" in data:
            try:
                json.dumps(value, ensure_ascii=False).encode()
            except UnicodeEncodeError as exc:
                bad = quote(exc.object[exc.start : exc.end])
                abort(
                    400, message=f"invalid JSON body: lone surrogate {bad} in a string"
                )
        return value

    def _handle_invalid_json_error(self, error, req, *args, **kwargs):
        abort(400, message=f"invalid JSON body: {error}")

    def handle_error(self, error, req, schema, *, error_status_code, error_headers):
        messages = error.messages
        if "json" in messages and len(messages) == 1:
            messages = messages["json"]
        data = _location_data(error, req)
        details = "; ".join(_describe_errors(messages, data))
        abort(
            error_status_code or self.DEFAULT_VALIDATION_STATUS,
            message=f"invalid request: {details}",
            errors=error.messages,
        )


def _location_data(error, req):
    """Return the input the error refers to, for quoting received values."""
    if isinstance(error.messages, dict) and "query" in error.messages:
        return req.args.to_dict()
    try:
        return json.loads(req.get_data(cache=True) or b"null")
    except ValueError:
        return None


def _describe_errors(messages, data, path=""):
    """Flatten marshmallow's nested messages into 'path: message (received X)'."""
    if isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        text = " ".join(messages).rstrip(".")
        if text == "Invalid input type":
            text = "expected a JSON object"
        if data is not _ABSENT:
            text += f" (received {quote(data)})"
        return [f"{path or 'body'}: {text}"]
    if isinstance(messages, dict):
        found = []
        for key, nested in messages.items():
            if key == "_schema" or (key in ("json", "query") and not path):
                # Errors of the object as a whole, or of the whole location.
                found.extend(_describe_errors(nested, data, path))
                continue
            if key in SECRET_FIELDS:
                # Never echo a secret back, even an invalid one.
                found.extend(_describe_errors(nested, _ABSENT, _join(path, key)))
                continue
            found.extend(_describe_errors(nested, _child(data, key), _join(path, key)))
        return found
    return [f"{path or 'body'}: {messages}"]


_ABSENT = object()


def _child(data, key):
    if isinstance(data, dict) and key in data:
        return data[key]
    if isinstance(data, list) and isinstance(key, int) and 0 <= key < len(data):
        return data[key]
    if key == "value" and data is not _ABSENT:
        # marshmallow nests errors of a Dict field's values under "value".
        return data
    return _ABSENT


def _join(path, key):
    if key == "value" and path:
        return path
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


class BrokerBlueprint(Blueprint):
    """Blueprint whose bodies go through :class:`BrokerParser`."""

    ARGUMENTS_PARSER = BrokerParser()


#: flask-smorest's registered response for each error status the API returns.
ERROR_RESPONSES = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    409: "CONFLICT",
    413: "REQUEST_ENTITY_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    503: "SERVICE_UNAVAILABLE",
}


def access(bp, role, errors=()):
    """Mark the role a view needs, and document its error responses and security.

    ``errors`` lists the statuses the view can return besides its success
    and the 422 that flask-smorest documents for invalid arguments; 401 and
    403 are added for every role but public. One ``doc`` call documents them
    all, where one ``alt_response`` per status would wrap the view once each
    and run each wrapper on every request.
    """
    codes = list(errors)
    if role != auth.PUBLIC:
        codes += [401, 403]
    responses = {code: ERROR_RESPONSES[code] for code in sorted(codes)}

    def decorate(view):
        doc = {"responses": responses} if responses else {}
        if role != auth.PUBLIC:
            doc["security"] = [{SECURITY_SCHEME: []}]
        if doc:
            view = bp.doc(**doc)(view)
        return auth.requires(role)(view)

    return decorate


def storage():
    """Return the RuntimeStorage of the application handling this request."""
    return flask.current_app.extensions["fuseline_broker"].storage


def retention():
    """Return the purge policy of the application handling this request."""
    return flask.current_app.extensions["fuseline_broker"].retention


def no_content():
    """Return an empty 204 response; a body would be parsed as JSON by workers."""
    response = flask.Response(status=204)
    # Werkzeug adds its default text/html type, which describes no body here.
    del response.headers["Content-Type"]
    return response


def json_response(value, status=200):
    """Serialize already-shaped data without a second pass through marshmallow."""
    return flask.current_app.response_class(
        json.dumps(value, separators=(",", ":")) + "\n",
        status=status,
        mimetype="application/json",
    )


__all__ = [
    "BrokerBlueprint",
    "abort",
    "json_response",
    "no_content",
    "quote",
    "retention",
    "storage",
]
