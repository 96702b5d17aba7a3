"""A trivial Flask app: the ceiling that gunicorn and Flask allow on this machine.

The benchmark serves it with the same gunicorn.conf.py as the broker and
sends it the worker's three request forms, so the difference in request rate
is the cost that the broker adds on top of gunicorn and Flask.
"""

import flask

app = flask.Flask(__name__)


@app.route("/", methods=["GET", "POST"])
def status():
    """Read and drop the request body, then return a fixed JSON object."""
    flask.request.get_data()
    return {"status": "ok"}
