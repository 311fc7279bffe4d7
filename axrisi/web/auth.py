"""Bearer-JWT authentication through flask-jwt-extended, with one answer for every failure.

HS256 with ``JWT_SECRET_KEY`` by default; ``JWT_PUBLIC_KEY`` with ``JWT_ALGORITHM`` accepts an
outside identity provider's tokens, and ``JWT_JWKS_URL`` takes that provider's rotating keys from
its JWKS document (``jwks.py``; ``JWT_ALGORITHM`` then lists the allowed algorithms). The user
is ``sub`` (a string) and ``exp`` is required.

Every failure (no header, not bearer, malformed, bad signature, ``alg: none``, expired, wrong
audience or issuer, a refresh token) is the same ``401`` so that a caller learns nothing about
which check failed. The check runs before the body is read, and nothing is charged to a quota.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import timedelta
from functools import wraps
from typing import Any, TypeVar, cast

import jwt
from flask import Flask, request
from flask_jwt_extended import (
    JWTManager,
    create_access_token,
    get_jwt,
    verify_jwt_in_request,
)
from flask_jwt_extended.exceptions import JWTExtendedException

from ..config import Settings
from ..users import user_key
from . import requestlog
from .errors import Unauthorized
from .jwks import JwksKeys
from .services import services

F = TypeVar("F", bound=Callable[..., Any])


def init_app(app: Flask, settings: Settings) -> None:
    """Configure flask-jwt-extended from the settings; tokens are read from the header only."""
    app.config.update(
        JWT_TOKEN_LOCATION=["headers"],
        JWT_HEADER_NAME="Authorization",
        JWT_HEADER_TYPE="Bearer",
        JWT_ALGORITHM=settings.jwt_algorithm or "HS256",
        JWT_DECODE_ALGORITHMS=[settings.jwt_algorithm or "HS256"],
        JWT_ACCESS_TOKEN_EXPIRES=timedelta(hours=12),
        JWT_VERIFY_SUB=True,
        JWT_ERROR_MESSAGE_KEY="error",
    )
    if settings.jwt_jwks_url:
        algorithms = settings.jwt_algorithm.split(",")
        app.config.update(JWT_ALGORITHM=algorithms[0], JWT_DECODE_ALGORITHMS=algorithms,
                          JWT_SECRET_KEY=None)
    elif settings.jwt_public_key:
        app.config["JWT_PUBLIC_KEY"] = settings.jwt_public_key.replace("\\n", "\n")
        app.config["JWT_SECRET_KEY"] = None
    else:
        app.config["JWT_SECRET_KEY"] = settings.jwt_secret_key or secrets.token_urlsafe(48)
    if settings.jwt_audience:  # checked on every token, and put in the ones we mint
        app.config["JWT_DECODE_AUDIENCE"] = settings.jwt_audience
        app.config["JWT_ENCODE_AUDIENCE"] = settings.jwt_audience
    if settings.jwt_issuer:
        app.config["JWT_DECODE_ISSUER"] = settings.jwt_issuer
        app.config["JWT_ENCODE_ISSUER"] = settings.jwt_issuer
    manager = JWTManager(app)
    manager.token_verification_loader(_claims_are_complete)
    if settings.jwt_jwks_url:
        keys = JwksKeys(settings.jwt_jwks_url, settings.jwks_cache_seconds,
                        settings.jwks_refetch_seconds)
        manager.decode_key_loader(lambda header, _payload: keys.key_for(header.get("kid")).key)


def _claims_are_complete(_header: dict[str, Any], data: dict[str, Any]) -> bool:
    """``exp`` is required and ``sub`` must be a non-empty string."""
    sub = data.get("sub")
    return "exp" in data and isinstance(sub, str) and bool(sub)


def current_user() -> str:
    """The authenticated user's ``sub``; only valid inside :func:`authenticated` views."""
    user = requestlog.current().user
    assert user is not None, "current_user() outside an @authenticated view"
    return user


def authenticate() -> str:
    """Verify the bearer token and return its ``sub``; raise the one 401 on any failure.

    A token this worker verified a moment ago is taken at its word, its time re-checked
    (``tokencache.py``): a client's next request skips the signature.
    """
    header = request.headers.get("Authorization")
    verified = services().verified_tokens
    if header and verified.enabled:
        user = verified.user(header)
        if user is not None:
            return user
    try:
        verify_jwt_in_request()
        claims = get_jwt()
        user = cast(str, claims["sub"])
    except (JWTExtendedException, jwt.PyJWTError, KeyError, ValueError, TypeError):
        raise Unauthorized() from None
    if header and verified.enabled:
        verified.remember(header, claims)
    return user


def authenticated(view: F) -> F:
    """Decorate a view that needs a user: the check runs before the view touches the body."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        info = requestlog.current()
        guard = services().login_guard
        address = request.remote_addr or ""
        guard.check(address)
        try:
            info.user = authenticate()
        except Unauthorized:
            guard.failed(address)
            raise
        info.user_hash = user_key(info.user)[:16]
        return view(*args, **kwargs)

    return cast(F, wrapper)


def mint_token(user: str, hours: float = 12.0) -> str:
    """An access token for ``user`` signed with the app's key (development and the CLI)."""
    return cast(str, create_access_token(identity=user, expires_delta=timedelta(hours=hours)))
