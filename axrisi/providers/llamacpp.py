"""The local model: every command on the managed llama.cpp server, within what it reads quickly.

``build_provider`` makes this the provider when ``AXRISI_LOCAL_MODEL`` names a model and
gunicorn's master has started its server (:mod:`axrisi.modelserver`). The answer itself streams
through the ordinary :class:`~axrisi.providers.openai_compat.OpenAIProvider` (or the fallback
around it): cancellation, usage and errors are that code's. This one adds three things:

* ``summarize`` keeps the extractive summary (:class:`~axrisi.providers.local.LocalProvider`),
  which beats a small model at it, unless ``AXRISI_LOCAL_SUMMARY=model``;
* a text longer than ``AXRISI_LOCAL_MODEL_INPUT_TOKENS`` (counted by the model's own tokenizer,
  through the server's ``/tokenize``, with the instructions and title) is cut to fit, at the
  last sentence end before the limit: a CPU reads a few hundred tokens a second at best, and a
  slot holds only so many;
* when it was cut, the answer starts with a quoted line that says how much was read, so the user
  can tell the answer covers part of the page. That line is the service's, not the model's: the
  only content that is not the model's output, and only then.

Counting needs the model server. With ``OPENAI_FALLBACK_BASE_URL``, a server that cannot count
(unreachable, 429, 5xx) does not end the stream: the whole prompt goes to the fallback provider,
which tries the model server once more and then the fallback, as for any primary.

The title event has left before any of this (the stream's first bytes never wait for the model),
and the relay's heartbeats cover the model's reading.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx2
import openai
import orjson

from ..commands import CATALOG, RunRequest
from .base import Prompt, Provider, ProviderError, StreamItem
from .fallback import FALLBACK_KINDS
from .local import LocalProvider
from .openai_compat import OpenAIProvider, status_error

REPETITION_CONTROLS: dict[str, Any] = {
    "repeat_penalty": 1.05, "repeat_last_n": 64,
    "dry_multiplier": 0.8, "dry_base": 1.75, "dry_allowed_length": 6, "dry_penalty_last_n": 512,
    "dry_sequence_breakers": ["\n\n", *"0123456789"],
}
"""llama.cpp's repetition controls, sent with every request to the local model (extra fields of
its ``/v1/chat/completions`` body), chosen with ``bench/repetition.py`` on 12 texts x the five
commands (``docs/benchmarks.md``, "The local model's repetitions"). Without them SmolLM2 said a
sentence 3 times or more in 8 % of its answers (17 % of translations), some of them up to the
output cap; with them (and the cap of 512 tokens), 1 %.

* DRY (an exponential penalty on a token that would extend a sequence seen before; multiplier
  and base as llama.cpp suggests) catches a sentence or paragraph said again. Sequences of up to
  ``dry_allowed_length`` 6 tokens are free: a name or figure from the text is not a repetition.
  Its breakers are a blank line (with llama.cpp's default, any line end, a short line was said
  60 times) and the digits (a number such as 1,050 is five tokens; copying it right is not
  punished).
* A slight ``repeat_penalty`` over the last 64 tokens stops the short loops DRY alone let
  through (measured: both together, not either alone). More (1.1, 1.2) made the model alter the
  text's numbers more often.

llama.cpp counts the prompt in both windows, so they also keep the model from handing the text
back unchanged (half the answers before); the price is a looser paraphrase that gets a figure
wrong more often (``docs/benchmarks.md`` has both).
"""
MIN_TEXT_TOKENS = 32
"""Below this much room for the text, the title and instruction are what is too long."""
LOOK_BACK_CHARS = 600
"""How far before the limit a cut looks for a sentence end (then a space) to stop at."""
_SENTENCE_END = re.compile(r"[.!?…。！？][\"'”’»)\]]*(?=\s)|\n\s*\n")


@dataclass(frozen=True)
class Cut:
    """How much of a text the model was given."""

    read_chars: int
    total_chars: int

    def note(self) -> str:
        """The quoted line that starts an answer to a cut text."""
        return (f"> Only the first {self.read_chars:,} of {self.total_chars:,} characters of "
                "the text were read (the local model's limit), so this answer covers that "
                "part.\n\n")


class LocalModelProvider:
    """The managed model for every command (summaries: the extractive one unless asked)."""

    name = "local"

    def __init__(self, model: Provider, server: OpenAIProvider, input_tokens: int,
                 extractive: LocalProvider | None) -> None:
        """``model`` answers (``server`` itself, or a fallback around it); ``server`` also
        counts tokens; ``extractive`` answers ``summarize`` when given."""
        self.model = model
        self.server = server
        self.input_tokens = input_tokens
        self.extractive = extractive
        self.root = (server.base_url or "").rstrip("/").removesuffix("/v1")

    def stream(self, prompt: Prompt) -> Iterator[StreamItem]:
        if self.extractive is not None and prompt.command == "summarize":
            return self.extractive.stream(prompt)
        return self._on_model(prompt)

    def _on_model(self, prompt: Prompt) -> Iterator[StreamItem]:
        try:
            fitted, cut = self.fit(prompt)
        except ProviderError as error:
            if self.model is self.server or error.kind not in FALLBACK_KINDS:
                raise
            fitted, cut = prompt, None  # the model server is down: the fallback takes it whole
        del prompt  # the whole page's text is not kept while the model answers
        if cut is not None:
            yield cut.note()
        yield from self.model.stream(fitted)

    def fit(self, prompt: Prompt) -> tuple[Prompt, Cut | None]:
        """The prompt as the model will get it, and how the text was cut (None: whole)."""
        whole = len(self._tokenize(prompt.system + "\n" + prompt.user, pieces=False))
        if whole <= self.input_tokens:
            return prompt, None
        pieces = self._tokenize(prompt.text, pieces=True)
        room = self.input_tokens - (whole - len(pieces))
        if room < MIN_TEXT_TOKENS:
            raise ProviderError("upstream_error",
                                "The title and instruction are too long for the local model; "
                                "shorten them and try again.", "too_long")
        end = cut_point(prompt.text, len(_joined(pieces[:room])))
        text = prompt.text[:end].rstrip()
        request = RunRequest(command=prompt.command, text=text, title=prompt.title,
                             language=prompt.language, instruction=prompt.instruction)
        return CATALOG[prompt.command].prompt(request), Cut(len(text), len(prompt.text))

    def _tokenize(self, content: str, pieces: bool) -> list[Any]:
        """The server's tokens for ``content`` (with their text pieces when asked)."""
        body = orjson.dumps({"content": content, "add_special": False, "with_pieces": pieces})
        try:  # the SDK's raw request to a path outside /v1, as OpenAIProvider sends its own
            response = self.server.client.post(self.root + "/tokenize", content=body,
                                               cast_to=httpx2.Response)
            tokens = orjson.loads(response.content)["tokens"]
        except openai.APIStatusError as error:
            raise status_error(error.status_code) from None
        except (openai.APIConnectionError, openai.APITimeoutError, httpx2.TransportError):
            raise ProviderError("upstream_error", "The connection to the model service failed.",
                                "connection") from None
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise ProviderError("upstream_error", "The model service sent a malformed response.",
                                "malformed") from None
        if not isinstance(tokens, list):
            raise ProviderError("upstream_error", "The model service sent a malformed response.",
                                "malformed")
        return tokens


def _joined(tokens: list[Any]) -> str:
    """The text of the first tokens: llama.cpp gives a piece as a string, or as a list of bytes
    when it is part of a character (which is then left out)."""
    data = bytearray()
    for token in tokens:
        piece = token.get("piece") if isinstance(token, dict) else None
        if isinstance(piece, str):
            data += piece.encode()
        elif isinstance(piece, list):
            data += bytes(b for b in piece if isinstance(b, int) and 0 <= b < 256)
    return data.decode("utf-8", errors="ignore")


def cut_point(text: str, limit: int) -> int:
    """Where to cut ``text`` to at most ``limit`` characters: after the last sentence end (or
    paragraph break) in the last :data:`LOOK_BACK_CHARS`, else at the last space, else at
    ``limit``."""
    limit = max(0, min(limit, len(text)))
    if limit == len(text):
        return limit
    start = max(0, limit - LOOK_BACK_CHARS)
    window = text[start:limit + 1]  # one more: a sentence end right at the limit counts
    ends = [m.end() for m in _SENTENCE_END.finditer(window) if m.end() <= limit - start]
    if ends:
        return start + ends[-1]
    space = text.rfind(" ", start, limit + 1)
    return space if space > 0 else limit
