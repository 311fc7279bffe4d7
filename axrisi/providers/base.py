"""The provider interface: what the stream needs from a model, and nothing more.

A provider turns a :class:`Prompt` into an iterator of content pieces followed by exactly one
:class:`Finish`. The streaming layer owns the greenlet that drives the iterator; cancelling a
stream kills that greenlet (``GreenletExit`` is raised wherever the provider is blocked) or calls
the generator's ``close()`` (``GeneratorExit``). Either way the provider's ``finally`` blocks must
release what they hold, above all the upstream HTTP connection: that is how a stream nobody reads
stops being billed. A :class:`HandsOver` provider may instead hand the rest of an answer to a
:class:`Pump`, read with no greenlet waiting; its iterator is closed all the same.

Errors a client may see are raised as :class:`ProviderError` with a sanitized sentence; anything
else escaping a provider is a bug and is reported to the client as ``internal``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class Prompt:
    """One command applied to one text, ready for a model.

    ``system`` and ``user`` are the chat messages for a chat model; the other fields keep the
    request's own parts for providers that work on the text directly (the local provider).
    """

    command: str
    system: str
    user: str
    text: str
    title: str | None = None
    language: str | None = None
    instruction: str | None = None


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts as the upstream reports them (or as a provider counts them itself)."""

    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int | None = None
    """Of the completion tokens, those the model spent reasoning, where the upstream says
    (``completion_tokens_details.reasoning_tokens``)."""


@dataclass(frozen=True, slots=True)
class Finish:
    """The last item of every successful provider stream."""

    reason: str
    model: str
    usage: Usage | None = None


class ProviderError(Exception):
    """A failure the client may hear about: ``code`` is one of the contract's stream error codes.

    ``message`` must already be safe to send: no key, no upstream address, no upstream body.
    """

    def __init__(self, code: str, message: str, kind: str = "error") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.kind = kind
        """For metrics: status_4xx, status_5xx, rate_limited, timeout, connection, ..."""


@dataclass(frozen=True, slots=True)
class Reasoning:
    """A piece of the model's reasoning (``delta.reasoning_content`` or ``delta.reasoning``),
    never part of the answer: relayed as ``reasoning`` events only when the request asked."""

    text: str


@dataclass(frozen=True, slots=True)
class Switched:
    """The primary upstream failed before its first content and the fallback takes over: no
    event for the client, but the generation restarts its silence watch and records why."""

    reason: str


Pulled = str | Reasoning | Finish | ProviderError
"""What a pump's read brings: content and reasoning pieces, then possibly the end (a Finish) or
a failure."""


class Pump(Protocol):
    """The rest of an answer, read when its socket is readable rather than by a blocked greenlet."""

    fileno: int

    def pull(self) -> list[Pulled]:
        """What one non-blocking read brought: pieces, then possibly the Finish or the
        failure that ends the answer (nothing when the read found nothing). Never blocks."""
        ...


@dataclass(frozen=True, slots=True)
class Handover:
    """From :meth:`HandsOver.stream_handover` only: the answer's headers are in, and the rest
    can be read on the socket's readiness through ``pump``, with no greenlet blocked per stream.
    A consumer that takes it closes the iterator when done; one that calls ``next`` instead gets
    the rest of the answer from the iterator as if nothing happened (after whatever it pulled
    itself)."""

    pump: Pump


StreamItem = str | Reasoning | Finish | Switched | Handover
"""A content piece (one or more tokens that arrived together, never empty), a
:class:`Reasoning` piece (the same, of the model's reasoning), the final Finish,
or (from :class:`~axrisi.providers.fallback.FallbackProvider` only) a :class:`Switched`, or
(from :meth:`HandsOver.stream_handover` only) a :class:`Handover`."""


class Provider(Protocol):
    """Something that streams a model's answer to a prompt."""

    name: str

    def stream(self, prompt: Prompt) -> Iterator[StreamItem]:
        """Yield content pieces, then one :class:`Finish`; raise ProviderError on failure."""
        ...


@runtime_checkable
class HandsOver(Provider, Protocol):
    """A provider that can also hand its answer's socket over once the headers are in (the
    OpenAI provider), to be read on the socket's readiness with no greenlet waiting per stream:
    the pump in ``axrisi.stream.generation``. Checked with ``isinstance``, once per stream."""

    def stream_handover(self, prompt: Prompt) -> Iterator[StreamItem]:
        """As :meth:`~Provider.stream`, with one :class:`Handover` once the headers are in when
        the body can be read that way (else exactly as ``stream``)."""
        ...
