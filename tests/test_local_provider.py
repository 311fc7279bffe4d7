"""Unit tests for the built-in local provider: a real extractive summary, streamed honestly."""

from __future__ import annotations

import re

import pytest

from axrisi.providers import local
from axrisi.providers.base import Finish, Prompt, ProviderError
from axrisi.providers.local import LocalProvider, split_sentences

ARTICLE = (
    "Solar panels turn sunlight into electricity for homes and businesses. "
    "Well, it is what it is. "
    "Modern solar panels convert about twenty percent of sunlight into electricity. "
    "So that was that, and then we went on. "
    "The weather was nice. "
    "Installers mount solar panels on roofs that face the sun for most of the day. "
    "We talked for a while. "
    "Battery storage lets a home use solar electricity after the sun sets. "
    "It was fine, really. "
    "Then there was lunch.\n\n"
    "Governments often subsidise solar panels to cut electricity bills and emissions. "
    "Nobody minded. "
    "Anyway, moving on. "
    "Prices for solar panels have fallen sharply over the last decade! "
    "Who knew?"
)


def run(text: str, command: str = "summarize") -> list[object]:
    """Drive the provider to completion with no pacing and return everything it yielded."""
    prompt = Prompt(command=command, system="", user=text, text=text)
    return list(LocalProvider(pace=0).stream(prompt))


def bullets(items: list[object]) -> list[str]:
    """The summary's sentences, read back from the joined pieces."""
    text = "".join(item for item in items if isinstance(item, str))
    return [line.removeprefix("- ") for line in text.splitlines()]


def test_summary_sentences_are_verbatim_and_in_order() -> None:
    """Every bullet is a sentence of the input, and bullets keep the input's order."""
    chosen = bullets(run(ARTICLE))
    sentences = split_sentences(ARTICLE)
    assert 1 <= len(chosen) <= 5
    positions = [sentences.index(sentence) for sentence in chosen]
    assert positions == sorted(positions)
    for sentence in chosen:
        assert sentence in ARTICLE


def test_content_sentence_beats_filler() -> None:
    """With one bullet to give, the sentence carrying the topic words wins over filler."""
    text = (
        "Well, it is what it is. "
        "Solar panels on the roof convert sunlight into electricity for the house. "
        "So that was that. "
        "Oh well, never mind. "
        "And so on and so forth."
    )
    chosen = bullets(run(text))
    assert len(chosen) == 1
    assert chosen == ["Solar panels on the roof convert sunlight into electricity for the house."]


def test_pieces_join_to_final_text_then_one_finish() -> None:
    """Non-empty pieces join to a Markdown bullet list; one Finish with usage comes last."""
    items = run(ARTICLE)
    *pieces, finish = items
    assert all(isinstance(piece, str) and piece for piece in pieces)
    assert isinstance(finish, Finish)
    assert finish.reason == "stop" and finish.model == "local"
    text = "".join(pieces)
    assert text == "".join(f"- {sentence}\n" for sentence in bullets(items))
    assert pieces[0].startswith("- ") and pieces[-1] == "\n"
    assert finish.usage is not None
    assert finish.usage.prompt_tokens == len(re.findall(r"\w+", ARTICLE))
    assert finish.usage.completion_tokens == len(pieces)


def test_abbreviations_and_decimals_do_not_split() -> None:
    """Titles, Latin shorthands, initials and decimals stay inside their sentence."""
    text = (
        "Dr. Smith paid $3.50 for it. Some fruit, e.g. apples, is cheap. "
        "J. K. Rowling wrote it in No. 5 Street... Then it ended! Did it? Yes."
    )
    assert split_sentences(text) == [
        "Dr. Smith paid $3.50 for it.",
        "Some fruit, e.g. apples, is cheap.",
        "J. K. Rowling wrote it in No. 5 Street...",
        "Then it ended!",
        "Did it?",
        "Yes.",
    ]


def test_lines_bullets_and_headings_split_sentences() -> None:
    """Blank lines, list items and headings end a sentence; wrapped lines are joined."""
    text = "# Plans\nWe will ship the new release\nnext week.\n\n- Fix the login bug\n2) Write docs"
    assert split_sentences(text) == [
        "Plans",
        "We will ship the new release next week.",
        "Fix the login bug",
        "Write docs",
    ]


def test_single_sentence_text() -> None:
    """A one-sentence text is summarized as that sentence."""
    items = run("  Dr. Smith paid $3.50 for it.  ")
    assert bullets(items) == ["Dr. Smith paid $3.50 for it."]
    assert "".join(i for i in items if isinstance(i, str)) == "- Dr. Smith paid $3.50 for it.\n"


@pytest.mark.parametrize("text", ["", "   \n\t  ", "... --- !!"])
def test_text_without_words_raises(text: str) -> None:
    """A text with no words fails with upstream_error and a sentence a person can act on."""
    with pytest.raises(ProviderError) as caught:
        run(text)
    assert caught.value.code == "upstream_error"
    assert "text" in caught.value.message


@pytest.mark.parametrize("command", ["explain", "translate", "rewrite", "custom", "poem"])
def test_other_commands_raise_before_any_piece(command: str) -> None:
    """Any command but summarize raises at the first next(), naming the command and the fix."""
    prompt = Prompt(command=command, system="", user=ARTICLE, text=ARTICLE)
    stream = LocalProvider(pace=0).stream(prompt)
    with pytest.raises(ProviderError) as caught:
        next(stream)
    assert caught.value.code == "upstream_error"
    assert command in caught.value.message
    assert "OPENAI_API_KEY" in caught.value.message


def test_large_text_is_summarized() -> None:
    """A 50,000-character text summarizes to at most five bullets."""
    paragraph = ARTICLE + "\n\n"
    text = (paragraph * (50_000 // len(paragraph) + 1))[:50_000]
    chosen = bullets(run(text))
    assert 1 <= len(chosen) <= 5
    assert all(sentence in text for sentence in chosen)


def test_pace_sleeps_between_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    """The provider sleeps ``pace`` seconds between pieces, and never when pace is zero."""
    calls: list[float] = []
    monkeypatch.setattr(local.time, "sleep", calls.append)
    prompt = Prompt(command="summarize", system="", user=ARTICLE, text=ARTICLE)
    pieces = [i for i in LocalProvider(pace=0.25).stream(prompt) if isinstance(i, str)]
    assert calls == [0.25] * (len(pieces) - 1)
    calls.clear()
    list(LocalProvider(pace=0).stream(prompt))
    assert calls == []


def test_close_stops_the_stream() -> None:
    """Closing the generator mid-stream ends it cleanly, as cancellation does."""
    prompt = Prompt(command="summarize", system="", user=ARTICLE, text=ARTICLE)
    stream = LocalProvider(pace=0).stream(prompt)
    assert next(stream).startswith("- ")
    stream.close()
    with pytest.raises(StopIteration):
        next(stream)


def test_same_input_same_output() -> None:
    """The summary is deterministic."""
    assert run(ARTICLE) == run(ARTICLE)
