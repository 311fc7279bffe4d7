"""A second upstream for when the first fails before it sent anything.

``OPENAI_FALLBACK_BASE_URL`` (with ``OPENAI_FALLBACK_API_KEY`` and ``AXRISI_FALLBACK_MODEL``):
when the primary cannot be reached, answers 429 or 5xx, or sends no content within the
upstream timeout, the same prompt goes once to the fallback. Never after the first content: the
client must not see text twice. The client sees one stream; the ``done`` event's ``model`` names
the model that answered, and the metrics (``axrisi_upstream_fallbacks_total{reason}``) and the
stream's log line say why the primary was skipped.

The primary's silence before its first content is bounded at :data:`FIRST_CONTENT_SHARE` of
``AXRISI_UPSTREAM_TIMEOUT_SECONDS``, so that the switch happens before the generation's own
silence watchdog would end the stream; the :class:`Switched` item then restarts that watch, and
the fallback gets the whole timeout.
"""

from __future__ import annotations

from collections.abc import Iterator

import gevent

from .. import metrics
from .base import Prompt, Provider, ProviderError, StreamItem, Switched

FALLBACK_KINDS = frozenset({"connection", "rate_limited", "status_5xx", "timeout"})
"""Failures worth another upstream; a 4xx (a bad request, bad credentials) would fail there too."""
FIRST_CONTENT_SHARE = 0.9


class _Silent(Exception):
    """The primary sent no content within its share of the upstream timeout."""


class FallbackProvider:
    """The primary provider, and once the fallback when the primary fails before content."""

    name = "openai"

    def __init__(self, primary: Provider, fallback: Provider, upstream_timeout: float) -> None:
        self.primary = primary
        self.fallback = fallback
        self.first_content_seconds = upstream_timeout * FIRST_CONTENT_SHARE

    def stream(self, prompt: Prompt) -> Iterator[StreamItem]:
        items = self.primary.stream(prompt)
        try:
            with gevent.Timeout(self.first_content_seconds, _Silent):
                first = next(items)
        except StopIteration:
            return
        except _Silent:
            reason = "timeout"
        except ProviderError as error:
            if error.kind not in FALLBACK_KINDS:
                raise
            reason = error.kind
        else:
            del prompt  # the page's text is not kept once the primary answers
            yield first
            yield from items
            return
        close = getattr(items, "close", None)
        if close is not None:
            close()  # the primary's upstream request is closed before the second one starts
        metrics.UPSTREAM_FALLBACKS.labels(reason).inc()
        yield Switched(reason)
        yield from self.fallback.stream(prompt)
