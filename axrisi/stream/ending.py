"""A stream's life as one state, and how it ended as one record.

The state moves only through :class:`~axrisi.stream.registry.StreamRegistry`'s methods:

    GENERATING ──last client gone, grace > 0──▶ IN_GRACE ──a client back──▶ GENERATING
        │        (never for a background stream)
        │                                         │
        │ terminal event written (done, error, cancelled: the generation ends)
        ▼                                         ▼
      ENDED ──end hooks ran (slot back, tokens charged, metrics, access log)──▶ SETTLED

:class:`StreamEnd` is computed once, when the stream ends, and handed to every end hook, so that
the quotas, the metrics and the access log agree on the outcome, the tokens and the times.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from .generation import Generation


class StreamState(Enum):
    GENERATING = "generating"
    """The model is being read; at least one client is attached (or the grace is 0, or it is a
    background stream, which nobody need read)."""
    IN_GRACE = "in_grace"
    """The model is being read with no client attached, until the grace runs out."""
    ENDED = "ended"
    """The terminal event is written; the end hooks are running."""
    SETTLED = "settled"
    """The end hooks ran: the response may end (see the relay)."""


@dataclass(frozen=True)
class StreamEnd:
    """How one stream ended: the figures every end hook uses."""

    outcome: str
    """``done``, or the terminal error's code (``cancelled``, ``upstream_error``, ...)."""
    started_at: float
    first_content_at: float | None
    ended_at: float
    tokens_out: int
    """Output tokens: the upstream's count where it reported usage (reasoning included), else the
    content and reasoning pieces."""
    tokens_used: int
    """What the stream costs the user's token quota: prompt + completion tokens as reported,
    or a count (the prompt's characters / 4 plus the content and reasoning pieces) where none
    was."""
    error_kind: str | None
    cancel_requested_at: float | None
    fallback_reason: str | None = None
    """Why the primary upstream was skipped for the fallback (None: the primary answered)."""

    @classmethod
    def of(cls, generation: Generation, ended_at: float,
           cancel_requested_at: float | None) -> StreamEnd:
        usage = generation.finish.usage if generation.finish is not None else None
        if usage is not None:
            tokens_out = usage.completion_tokens
            tokens_used = usage.prompt_tokens + usage.completion_tokens
        else:
            tokens_out = generation.content_pieces + generation.reasoning_pieces
            tokens_used = math.ceil(generation.prompt_chars / 4) + tokens_out
        return cls(generation.outcome or "internal", generation.started_at,
                   generation.first_content_at, ended_at, tokens_out, tokens_used,
                   generation.error_kind, cancel_requested_at, generation.fallback_reason)
