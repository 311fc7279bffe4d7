"""The built-in provider: a real extractive summarizer, so the service works with no model at all.

It exists so anyone can run the service in one command, with no key and no network, and still see
a genuine answer stream in: the summary is computed from the text (sentences scored by how many of
the text's frequent content words they carry), then emitted word by word at a steady pace, like a
model's tokens.

Honesty rule: this provider only does what it can really do. Every sentence it outputs is a
sentence of the input (whitespace normalised, list markers dropped), nothing is invented, and any
command other than ``summarize`` fails with a :class:`ProviderError` that says which setting turns
on a real model, instead of pretending to explain, translate or rewrite. (With
``AXRISI_LOCAL_MODEL``, :mod:`axrisi.providers.llamacpp` sends those commands to a model on this
machine and keeps this summary for ``summarize``.)

Everything here is linear in the text's length (one pass per step, regular expressions without
backtracking traps), so the longest accepted text summarizes in a few milliseconds. The generator
holds no resources: killing its greenlet at a sleep, or calling ``close()``, needs no cleanup.
"""

from __future__ import annotations

import heapq
import math
import re
import time
from collections import Counter
from collections.abc import Iterator

from axrisi.providers.base import Finish, Prompt, ProviderError, StreamItem, Usage

MODEL = "local"
MAX_SUMMARY_SENTENCES = 5
SENTENCES_PER_SUMMARY_SENTENCE = 5
POSITION_BONUS = 0.15
"""How much more the first sentence weighs than the last: openings tend to state the topic."""

STOP_WORDS = frozenset(
    """
    a about above after again against all almost also although am among an and any are around as
    at be because been before being below between both but by can cannot could did do does doing
    done down during each either else even ever every few for from further get gets got had has
    have having he her here hers herself him himself his how however i if in into is it its itself
    just least less let like made make many may me might more most much must my myself neither no
    nor not now of off often on once one only or other others our ours ourselves out over own per
    quite rather really said same say says shall she should since so some such than that the their
    theirs them themselves then there therefore these they this those though through thus to too
    under until up upon us use used very via was we well were what when where whether which while
    who whom whose why will with within without would yet you your yours yourself yourselves
    it's don't doesn't didn't isn't wasn't aren't weren't can't won't wouldn't shouldn't couldn't
    i'm i've i'd i'll you're you've you'll you'd we're we've we'll they're they've they'll he's
    she's that's there's what's let's oh ok okay yes yeah never anyway
    """.split()
)

ALWAYS_ABBREVIATIONS = frozenset(
    """
    mr mrs ms dr prof sr st mt gen capt lt col sgt rev hon sen rep gov pres supt
    e.g i.e cf vs viz approx ca fig figs eq
    """.split()
)
"""Words whose trailing period never ends a sentence: titles and Latin shorthands."""

NUMBER_ABBREVIATIONS = frozenset(
    """
    no nos vol vols p pp ch sec art para op
    jan feb mar apr jun jul aug sep sept oct nov dec
    """.split()
)
"""Words whose trailing period does not end a sentence when a number follows ("No. 5")."""

CONTINUATION_ENDINGS = frozenset(",;:-–—(&/")
"""A line ending in one of these is continued by the next line, whatever case that one starts."""

_WORD_RE = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")
_MARKER_RE = re.compile(r"(?:[-*+•‣◦▪]|\d{1,3}[.)]|#{1,6})\s+")
_TERMINATOR_RE = re.compile(r"([.!?…]+)[\"'”’»)\]]*(?= |$)")
_ABBREVIATION_RE = re.compile(r"[^\W\d_]+(?:\.[^\W\d_]+)*")
_OPENERS = "\"'“‘«([{"


class LocalProvider:
    """Summarizes extractively and streams the result; refuses every other command."""

    name = "local"

    def __init__(self, pace: float = 0.03) -> None:
        """``pace`` is the pause between pieces, so the answer streams in instead of landing."""
        if pace < 0 or math.isnan(pace):
            raise ValueError("pace must be a non-negative number of seconds")
        self.pace = pace

    def stream(self, prompt: Prompt) -> Iterator[StreamItem]:
        """Yield the summary's pieces, then one Finish; raise ProviderError before any piece."""
        if prompt.command != "summarize":
            raise ProviderError("upstream_error", _unsupported_message(prompt.command))
        prompt_tokens = count_words(prompt.text)
        if prompt_tokens == 0:
            raise ProviderError(
                "upstream_error",
                "There is no text to summarize: select a passage with some words and try again.",
            )
        pieces = to_pieces(summarize(prompt.text))
        for index, piece in enumerate(pieces):
            if index and self.pace > 0:
                time.sleep(self.pace)  # looked up at call time, so gevent's patch applies
            yield piece
        usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=len(pieces))
        yield Finish(reason="stop", model=MODEL, usage=usage)


def _unsupported_message(command: str) -> str:
    """Name the command the user asked for (only if it looks like a command name) and the fix."""
    shown = command if re.fullmatch(r"[A-Za-z][\w-]{0,31}", command or "") else "this command"
    return (
        "The built-in local provider can only summarize; set AXRISI_LOCAL_MODEL (a model on "
        f"this machine), OPENAI_API_KEY or OPENAI_BASE_URL to use a model for {shown}."
    )


def count_words(text: str) -> int:
    """Word tokens in ``text``: what the local provider reports as its prompt tokens."""
    return sum(1 for _ in _WORD_RE.finditer(text))


def summarize(text: str) -> list[str]:
    """The most representative sentences of ``text``, in their original order."""
    sentences = split_sentences(text)
    if not sentences:
        return []
    words = [_words(sentence) for sentence in sentences]
    scores = _score(words)
    size = summary_size(len(sentences))
    best = heapq.nlargest(size, range(len(sentences)), key=lambda i: (scores[i], -i))
    return [sentences[i] for i in sorted(best)]


def summary_size(sentence_count: int) -> int:
    """About one sentence in five, at least one, at most five, never more than there are."""
    wanted = round(sentence_count / SENTENCES_PER_SUMMARY_SENTENCE)
    return min(sentence_count, max(1, min(MAX_SUMMARY_SENTENCES, wanted)))


def to_pieces(sentences: list[str]) -> list[str]:
    """A Markdown bullet list cut like model tokens: "- First", " word", ..., "\\n"."""
    pieces: list[str] = []
    for sentence in sentences:
        first, *rest = sentence.split(" ")
        pieces.append(f"- {first}")
        pieces.extend(f" {word}" for word in rest)
        pieces.append("\n")
    return pieces


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text`` with whitespace collapsed; fragments without words are dropped."""
    sentences: list[str] = []
    for block in _blocks(text):
        sentences.extend(s for s in _split_block(block) if _WORD_RE.search(s))
    return sentences


def _blocks(text: str) -> Iterator[str]:
    """Paragraphs and list items, so a sentence never runs across a bullet, heading or blank line.

    A single line break joins two lines only when they look like one wrapped sentence (the next
    line starts in lower case, or this one ends in a comma or the like); text copied from a page
    puts headings and paragraphs on their own lines without a final period.
    """
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        marker = _MARKER_RE.match(line)
        if marker:
            line = line[marker.end() :]
        if not line or marker or not current or not _continues(current, line):
            if current:
                yield current
            current = line
        else:
            current = f"{current} {line}"
    if current:
        yield current


def _continues(previous: str, line: str) -> bool:
    """Whether ``line`` carries on the sentence that ``previous`` left open."""
    return line[0].islower() or previous[-1] in CONTINUATION_ENDINGS


def _split_block(block: str) -> Iterator[str]:
    """Cut one paragraph at sentence ends, skipping abbreviations, initials and decimals."""
    block = " ".join(block.split())
    start = 0
    for match in _TERMINATOR_RE.finditer(block):
        end = match.end()
        if end < len(block) and not _ends_sentence(block, match):
            continue
        yield block[start:end]
        start = end + 1
    if start < len(block):
        yield block[start:]


def _ends_sentence(block: str, match: re.Match[str]) -> bool:
    """Decide a terminator followed by a space: decimals never match (no space after the dot)."""
    following = block[match.end() + 1]
    if following.islower():
        return False  # "e.g. the", "Wow!" he said, "wait... then"
    if match.group(1) != ".":
        return True
    # The token before the dot; tokens are disjoint, so these scans add up to one pass.
    word = block[block.rfind(" ", 0, match.start()) + 1 : match.start()].lstrip(_OPENERS)
    if not _ABBREVIATION_RE.fullmatch(word):
        return True
    if len(word) == 1 and word.isupper():
        return False  # an initial: "J. K. Rowling"
    lowered = word.lower()
    if lowered in ALWAYS_ABBREVIATIONS:
        return False
    return not (lowered in NUMBER_ABBREVIATIONS and following.isdigit())


def _words(sentence: str) -> list[str]:
    """The sentence's words, lower-cased, with typographic apostrophes made plain."""
    return _WORD_RE.findall(sentence.lower().replace("’", "'"))


def _content_words(words: list[str]) -> list[str]:
    """The words that carry meaning, folded so "Panels" and "panel" count as one."""
    return [_fold(w) for w in words if len(w) > 1 and w not in STOP_WORDS]


def _fold(word: str) -> str:
    """A crude plural fold: cheap, deterministic, and enough for frequency counting."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def _score(words: list[list[str]]) -> list[float]:
    """Luhn-style scores: frequent content words per sentence, with a small lead for early ones.

    Dividing by the square root of the sentence's length keeps long sentences from winning on
    length alone while still preferring sentences that say more than a filler line.
    """
    content = [_content_words(sentence_words) for sentence_words in words]
    frequency = Counter(word for sentence_content in content for word in sentence_content)
    top = max(frequency.values(), default=1)
    count = len(words)
    scores: list[float] = []
    for index, (sentence_words, sentence_content) in enumerate(zip(words, content, strict=True)):
        weight = sum(frequency[word] for word in sentence_content) / top
        position = 1 + POSITION_BONUS * (1 - index / count)
        scores.append(weight / math.sqrt(max(1, len(sentence_words))) * position)
    return scores
