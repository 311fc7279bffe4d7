"""gunicorn settings for the naive baseline (``bench/naive_app.py``): the service's worker.

Passed explicitly with ``-c`` so that gunicorn does not pick up the service's own
``./gunicorn.conf.py`` (it loads that file from the working directory by default) and its hooks.
The settings that shape a streaming worker match the service's: one gevent worker, room for
20,000 connections, the same timeouts and keep-alive; the bind comes from the command line.
"""

import os

workers = 1
worker_class = "gevent"
worker_connections = 20000
timeout = 30
graceful_timeout = 60
keepalive = 5
control_socket_disable = True
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "warning")
accesslog = None
