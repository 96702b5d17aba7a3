"""WSGI entry point: ``gunicorn wsgi:app`` serves the broker."""

from fuseline_broker import create_app

app = create_app()
