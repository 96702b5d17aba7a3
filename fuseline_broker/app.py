"""The application factory for running the broker on its own."""

import logging
import os

import flask

from .config import load_environment, resolve
from .extension import Broker

INSTANCE_CONFIG_FILE = "config.py"


def create_app(config=None, instance_path=None):
    """Create the broker application.

    Settings are layered: defaults, then ``config.py`` in the instance folder
    if it exists, then ``FUSELINE_BROKER_*`` environment variables, then the
    ``config`` mapping. ``instance_path`` replaces Flask's default
    instance folder.
    """
    app = flask.Flask(
        __name__, instance_path=instance_path, instance_relative_config=True
    )
    os.makedirs(app.instance_path, exist_ok=True)
    app.config.from_pyfile(INSTANCE_CONFIG_FILE, silent=True)
    load_environment(app.config)
    if config is not None:
        app.config.update(config)

    _configure_logging(resolve(app.config)["LOG_LEVEL"])
    Broker(app)
    return app


def _configure_logging(level):
    """Send the broker's log lines to stderr unless the host set up logging."""
    logger = logging.getLogger("fuseline_broker")
    if logger.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(
        logging.Formatter(
            "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"
        )
    )
    logger.addHandler(handler)
    logger.setLevel(level)
