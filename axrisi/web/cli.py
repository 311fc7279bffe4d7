"""Command-line helpers: ``flask --app app token USER`` mints a token to try the API with."""

from __future__ import annotations

import click
from flask import Flask

from .auth import mint_token


def init_app(app: Flask) -> None:
    """Register the ``token`` command."""

    @app.cli.command("token")
    @click.argument("user")
    @click.option("--hours", default=12.0, show_default=True, help="How long the token lives.")
    def token(user: str, hours: float) -> None:
        """Print an access token for USER, signed with JWT_SECRET_KEY."""
        click.echo(mint_token(user, hours))
