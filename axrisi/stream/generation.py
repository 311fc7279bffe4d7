"""A stream's generation: the greenlet that reads the provider and writes the event log.

It owns the upstream request. Every way it can end writes exactly one terminal event and then
closes the provider's iterator, which closes the upstream HTTP connection:

* the provider finishes → ``done``;
* the provider raises :class:`ProviderError` → ``error`` with its sanitized sentence;
* it is interrupted (:meth:`Generation.interrupt`) because the client left, the upstream was
  silent too long, or the worker is shutting down → ``error`` with that code;
* anything else is a bug → logged with its stack trace server-side, ``internal`` to the client.

The silence watchdog is one libev timer per stream, re-armed lazily: the per-token cost is a
timestamp store, not a timer restart.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import gevent
from gevent import Greenlet, GreenletExit

from ..providers.base import Finish, Prompt, Provider, ProviderError, StreamItem, Switched
from .eventlog import EventLog

log = logging.getLogger(__name__)

INTERNAL_MESSAGE = "Something went wrong on our side; please try again."


class Interrupted(GreenletExit):
    """Thrown into a generation to stop it; carries the terminal event's code and sentence."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Generation:
    """Drives one provider stream into one event log, in its own greenlet."""

    def __init__(self, log_: EventLog, provider: Provider, prompt: Prompt,
                 upstream_timeout: float,
                 on_end: Callable[[Generation], None] | None = None) -> None:
        self.log = log_
        self.provider = provider
        # The prompt holds the page's text (up to AXRISI_MAX_TEXT_CHARS): it is handed to the
        # provider when the generation starts and not kept, only its size (for tokens_used).
        self.prompt: Prompt | None = prompt
        self.prompt_chars = len(prompt.system) + len(prompt.user)
        self.upstream_timeout = upstream_timeout
        self.on_end = on_end
        self.outcome: str | None = None
        self.error_kind: str | None = None
        self.finish: Finish | None = None
        self.content_pieces = 0
        self.fallback_reason: str | None = None
        """Why the primary upstream was skipped for the fallback, when it was."""
        self.first_content_at: float | None = None
        self.started_at = time.monotonic()
        self.last_activity = self.started_at
        self._timer: Any = None
        self._entered = False
        self._pending: Interrupted | None = None
        self.greenlet: Greenlet[[], None] = Greenlet(self._run)

    @property
    def running(self) -> bool:
        """True until the terminal event is written."""
        return self.outcome is None

    def start(self) -> None:
        """Start reading the provider; the upstream request begins at once."""
        self._arm(self.upstream_timeout)
        self.greenlet.start()

    def interrupt(self, code: str, message: str) -> None:
        """Stop the generation with a terminal error event; the upstream is closed promptly."""
        if not self.running or self.greenlet.dead:
            return
        if not self._entered:
            # Killing a greenlet that has not run yet would stop it from ever running, and the
            # stream would never get its terminal event: let it start and stop at once instead.
            self._pending = Interrupted(code, message)
            return
        self.greenlet.kill(Interrupted(code, message), block=False)

    def _run(self) -> None:
        self._entered = True
        items: Iterator[StreamItem] | None = None
        try:
            if self._pending is not None:
                raise self._pending
            prompt, self.prompt = self.prompt, None
            assert prompt is not None
            items = self.provider.stream(prompt)
            del prompt
            self._relay(items)
        except Interrupted as stop:
            if stop.code == "upstream_timeout":
                self.error_kind = "timeout"
            self._end(stop.code, {"error": stop.message, "code": stop.code})
        except GreenletExit:
            self._end("cancelled", {"error": "The stream was cancelled.", "code": "cancelled"})
            raise
        except ProviderError as error:
            self.error_kind = error.kind
            self._end(error.code, {"error": error.message, "code": error.code})
        except Exception:
            log.exception("generation failed")
            self._end("internal", {"error": INTERNAL_MESSAGE, "code": "internal"})
        finally:
            self._disarm()
            close = getattr(items, "close", None) if items is not None else None
            if close is not None:
                close()
            # Called once and let go: the registry's hook closes over the stream, which holds
            # this generation, and that cycle would keep the stream's events (its whole answer)
            # alive after it expired until a full collection, which an idle worker never runs.
            on_end, self.on_end = self.on_end, None
            if on_end is not None:
                on_end(self)

    def _relay(self, items: Iterator[StreamItem]) -> None:
        """The per-token loop: keep it to a timestamp, one append and nothing else."""
        append = self.log.append
        command_id = self.log.stream_id
        for item in items:
            self.last_activity = time.monotonic()
            if isinstance(item, str):
                if self.first_content_at is None:
                    self.first_content_at = self.last_activity
                self.content_pieces += 1
                append({"content": item, "commandId": command_id})
            elif isinstance(item, Switched):  # the fallback upstream takes over (no event)
                self.fallback_reason = item.reason
            else:
                self.finish = item
                self._end("done", _done_payload(item))
                return
        raise ProviderError("upstream_error", "The model service ended the stream early.",
                            "ended_early")

    def _end(self, outcome: str, payload: dict[str, Any]) -> None:
        if self.outcome is not None:
            return
        self.outcome = outcome
        payload["commandId"] = self.log.stream_id
        if outcome == "done":
            self.log.append(payload, final=True)
        else:
            self.log.append(payload, name="error", final=True)

    def _arm(self, seconds: float) -> None:
        self._timer = gevent.get_hub().loop.timer(max(seconds, 0.001))
        self._timer.start(self._check_silence)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.close()
            self._timer = None

    def _check_silence(self) -> None:
        """Timer callback (in the hub): interrupt on silence, else re-arm for the remainder."""
        self._disarm()
        if not self.running:
            return
        idle = time.monotonic() - self.last_activity
        if idle >= self.upstream_timeout:
            self.interrupt("upstream_timeout", "The model service did not answer in time.")
        else:
            self._arm(self.upstream_timeout - idle)


def _done_payload(finish: Finish) -> dict[str, Any]:
    payload: dict[str, Any] = {"done": True, "finishReason": finish.reason, "model": finish.model}
    if finish.usage is not None:
        payload["usage"] = {"promptTokens": finish.usage.prompt_tokens,
                            "completionTokens": finish.usage.completion_tokens}
    return payload
