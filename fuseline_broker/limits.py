"""Configurable size limits on what a request may carry."""

from dataclasses import dataclass

import flask
import marshmallow as ma


@dataclass(frozen=True)
class Limits:
    """The limits in force; see the matching ``FUSELINE_BROKER_MAX_*`` settings."""

    max_name_length: int = 255
    max_steps: int = 1000
    max_result_bytes: int = 256 * 1024
    max_json_depth: int = 32


def current():
    """Return the limits of the application handling this request."""
    if flask.has_app_context():
        state = flask.current_app.extensions.get("fuseline_broker")
        if state is not None:
            return state.limits
    return Limits()


def json_depth(value):
    """Return how deeply lists and objects nest in a JSON value (a scalar is 0)."""
    depth = 0
    pending = [(value, 1)]
    while pending:
        item, level = pending.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        depth = max(depth, level)
        pending.extend((child, level + 1) for child in children)
    return depth


def check_name_length(value):
    """marshmallow validator: reject a name longer than the configured maximum."""
    limit = current().max_name_length
    if len(value) > limit:
        raise ma.ValidationError(
            f"must be at most {limit} characters, received {len(value)}"
        )


def check_depth(value):
    """marshmallow validator: reject JSON nested deeper than the maximum."""
    limit = current().max_json_depth
    depth = json_depth(value)
    if depth > limit:
        raise ma.ValidationError(f"nests {depth} levels deep; the maximum is {limit}")
