"""gunicorn settings picked up by ``gunicorn wsgi:app`` from this folder.

Each setting can be overridden on the command line. The broker keeps no
state in memory between requests, so any number of processes may share one
SQLite file.
"""

import os

bind = os.environ.get("FUSELINE_BROKER_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("FUSELINE_BROKER_WORKERS", "2"))
worker_class = "gthread"
threads = int(os.environ.get("FUSELINE_BROKER_THREADS", "2"))
# fuseline workers send three requests per step; keeping the connection open
# saves a TCP handshake on each.
keepalive = 5
# gunicorn 27 opens a control socket at one fixed path per user; several
# brokers on one machine (tests, a benchmark) would share it.
control_socket_disable = True
