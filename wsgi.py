"""WSGI entry point: ``gunicorn wsgi:app`` serves the broker.

The instance folder is pinned beside this file, so the SQLite file and an
optional ``config.py`` live in ``instance/`` however the package was installed.
"""

from pathlib import Path

from fuseline_broker import create_app

app = create_app(instance_path=str(Path(__file__).resolve().parent / "instance"))
