"""The WSGI entry point: ``gunicorn -c gunicorn.conf.py app:app``."""

from axrisi import create_app

app = create_app()
