"""Providers: the OpenAI-compatible upstream and the built-in local one, behind one interface."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..config import Settings
from .base import Provider

if TYPE_CHECKING:
    from .openai_compat import OpenAIProvider


def build_provider(settings: Settings) -> Provider:
    """The provider the settings ask for (``AXRISI_PROVIDER``, else by key/base URL presence).

    The local provider is the extractive summary alone, or, when gunicorn's master runs the
    model named by ``AXRISI_LOCAL_MODEL`` (it then sets ``AXRISI_MODEL_SERVER_URL``), every
    command on that model through the same OpenAI provider as any upstream.
    """
    if settings.provider == "openai":
        return _with_fallback(settings, _openai(settings, settings.openai_api_key,
                                                settings.openai_base_url, settings.model))
    from .local import LocalProvider

    local = LocalProvider(pace=settings.local_pace_seconds)
    if not settings.local_model or not settings.model_server_url:
        return local
    from ..modelserver import model_name
    from .llamacpp import LocalModelProvider

    server = _openai(settings, settings.model_server_key, settings.model_server_url,
                     model_name(settings.local_model), local_model_options(settings))
    return LocalModelProvider(
        model=_with_fallback(settings, server), server=server,
        input_tokens=settings.local_model_input_tokens,
        extractive=local if settings.local_summary == "extractive" else None)


def local_model_options(settings: Settings) -> dict[str, Any]:
    """The fields the workers add to every request's body for the local model: the sampling
    settings, llama.cpp's repetition controls (:data:`.llamacpp.REPETITION_CONTROLS`) and the
    output cap. ``bench/repetition.py`` sends the same."""
    from .llamacpp import REPETITION_CONTROLS

    options: dict[str, Any] = {"temperature": settings.local_model_temperature,
                               **REPETITION_CONTROLS,
                               "max_tokens": settings.local_model_output_tokens}
    if settings.local_model_seed is not None:
        options["seed"] = settings.local_model_seed
    return options


def _openai(settings: Settings, api_key: str | None, base_url: str | None, model: str,
            options: dict[str, Any] | None = None) -> OpenAIProvider:
    from .openai_compat import OpenAIProvider

    return OpenAIProvider(api_key=api_key, base_url=base_url, model=model,
                          max_connections=settings.max_streams,
                          transport=settings.upstream_transport, options=options)


def _with_fallback(settings: Settings, primary: Provider) -> Provider:
    """The primary, or the primary with ``OPENAI_FALLBACK_BASE_URL`` behind it."""
    if settings.openai_fallback_base_url is None:
        return primary
    from .fallback import FallbackProvider

    fallback = _openai(settings, settings.openai_fallback_api_key or settings.openai_api_key,
                       settings.openai_fallback_base_url,
                       settings.fallback_model or settings.model)
    return FallbackProvider(primary, fallback, settings.upstream_timeout_seconds)
