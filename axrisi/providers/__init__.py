"""Providers: the OpenAI-compatible upstream and the built-in local one, behind one interface."""

from __future__ import annotations

from ..config import Settings
from .base import Provider


def build_provider(settings: Settings) -> Provider:
    """The provider the settings ask for (``AXRISI_PROVIDER``, else by key/base URL presence)."""
    if settings.provider == "openai":
        from .openai_compat import OpenAIProvider

        primary = OpenAIProvider(
            api_key=settings.openai_api_key,
            base_url=settings.openai_base_url,
            model=settings.model,
            max_connections=settings.max_streams,
            transport=settings.upstream_transport,
        )
        if settings.openai_fallback_base_url is None:
            return primary
        from .fallback import FallbackProvider

        fallback = OpenAIProvider(
            api_key=settings.openai_fallback_api_key or settings.openai_api_key,
            base_url=settings.openai_fallback_base_url,
            model=settings.fallback_model or settings.model,
            max_connections=settings.max_streams,
            transport=settings.upstream_transport,
        )
        return FallbackProvider(primary, fallback, settings.upstream_timeout_seconds)
    from .local import LocalProvider

    return LocalProvider(pace=settings.local_pace_seconds)
