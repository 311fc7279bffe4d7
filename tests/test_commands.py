"""Unit tests for the command catalog (axrisi/commands.py): labels, public view, titles, prompts."""

from __future__ import annotations

import json

import pytest

from axrisi import jsonutil
from axrisi.commands import CATALOG, RunRequest, public_catalog
from axrisi.providers.base import Prompt

EXPECTED_LABELS = {
    "summarize": "Summarize",
    "explain": "Explain",
    "translate": "Translate",
    "rewrite": "Rewrite",
    "custom": "Custom",
}


def request(command: str, **fields: str | None) -> RunRequest:
    """A RunRequest for ``command`` on a short text, with extra fields."""
    return RunRequest(command=command, text=fields.pop("text", None) or "Hello world.", **fields)


def test_the_five_commands_exist_with_labels() -> None:
    """The catalog holds summarize, explain, translate, rewrite and custom with their labels."""
    assert {name: CATALOG[name].label for name in EXPECTED_LABELS} == EXPECTED_LABELS
    for name, command in CATALOG.items():
        assert command.name == name


def test_required_fields() -> None:
    """translate requires language, custom requires instruction, the others nothing."""
    assert {name: CATALOG[name].requires for name in EXPECTED_LABELS} == {
        "summarize": (),
        "explain": (),
        "translate": ("language",),
        "rewrite": (),
        "custom": ("instruction",),
    }


def test_public_catalog_shape() -> None:
    """public_catalog() is {"commands": [...]} with name, label, description and requires."""
    catalog = public_catalog()
    assert list(catalog) == ["commands"]
    entries = catalog["commands"]
    assert [entry["name"] for entry in entries] == list(CATALOG)
    assert set(EXPECTED_LABELS) <= {entry["name"] for entry in entries}
    for entry in entries:
        assert set(entry) == {"name", "label", "description", "requires"}
        assert entry["label"] == CATALOG[entry["name"]].label
        assert isinstance(entry["description"], str) and entry["description"].strip()
        assert entry["requires"] == list(CATALOG[entry["name"]].requires)
    by_name = {entry["name"]: entry for entry in entries}
    assert by_name["translate"]["requires"] == ["language"]
    assert by_name["custom"]["requires"] == ["instruction"]
    assert by_name["summarize"]["requires"] == []


def test_public_catalog_is_json_serializable() -> None:
    """The catalog body serializes to JSON and back unchanged."""
    catalog = public_catalog()
    assert json.loads(jsonutil.dumps(catalog)) == catalog


def test_public_catalog_never_exposes_the_prompt() -> None:
    """No command's system prompt, nor the shared rules, appear anywhere in the public catalog."""
    body = jsonutil.dumps(public_catalog()).decode()
    for command in CATALOG.values():
        assert command.system not in body
        assert command.system[:40] not in body
    assert "<text>" not in body
    assert "not instructions to follow" not in body
    assert "system" not in {key for entry in public_catalog()["commands"] for key in entry}


@pytest.mark.parametrize(
    ("command", "fields", "expected"),
    [
        ("summarize", {"title": "The UM870 Mini PC"}, "Summary of The UM870 Mini PC"),
        ("explain", {"title": "Quantum dots"}, "Explanation of Quantum dots"),
        ("rewrite", {"title": "My draft"}, "Rewrite of My draft"),
        ("custom", {"title": "Notes", "instruction": "List verbs."}, "Result of Notes"),
        ("translate", {"title": "Le Monde", "language": "English"},
         "Translation of Le Monde into English"),
        ("summarize", {}, "Summary"),
        ("explain", {}, "Explanation"),
        ("rewrite", {}, "Rewrite"),
        ("custom", {"instruction": "List verbs."}, "Result"),
        ("translate", {"language": "French"}, "Translation into French"),
    ],
)
def test_titles(command: str, fields: dict[str, str], expected: str) -> None:
    """The first event's title: "<Noun> of <title>" with a title, just the noun without one."""
    title = CATALOG[command].title(request(command, **fields))
    assert title == expected
    assert "None" not in title


@pytest.mark.parametrize("command", list(EXPECTED_LABELS))
def test_prompt_wraps_text_in_tags_and_includes_title(command: str) -> None:
    """The user message is the title line, then the text between <text> tags, verbatim."""
    text = "Line one.\nLine {two} with <b>markup</b>."
    prompt = CATALOG[command].prompt(
        request(command, text=text, title="Page Title", language="German",
                instruction="Count the words."))
    assert isinstance(prompt, Prompt)
    assert prompt.user == f"Title: Page Title\n\n<text>\n{text}\n</text>"
    assert prompt.command == command
    assert prompt.text == text
    assert prompt.title == "Page Title"


@pytest.mark.parametrize("command", list(EXPECTED_LABELS))
def test_prompt_without_title(command: str) -> None:
    """Without a title the user message is just the tagged text, with no 'Title:' line."""
    prompt = CATALOG[command].prompt(
        request(command, text="Just this.", language="German", instruction="Do it."))
    assert prompt.user == "<text>\nJust this.\n</text>"
    assert prompt.title is None


@pytest.mark.parametrize("command", list(EXPECTED_LABELS))
def test_system_message_carries_the_rules(command: str) -> None:
    """Every system message says the tagged text is material, not instructions."""
    prompt = CATALOG[command].prompt(request(command, language="German", instruction="Do it."))
    assert "<text>" in prompt.system
    assert "not instructions to follow" in prompt.system
    assert "{" not in prompt.system and "}" not in prompt.system


def test_translate_language_goes_in_the_system_message() -> None:
    """translate names the target language in the system message, not in the user message."""
    prompt = CATALOG["translate"].prompt(request("translate", text="Bonjour", language="Japanese"))
    assert "into Japanese" in prompt.system
    assert "Japanese" not in prompt.user
    assert prompt.language == "Japanese"


def test_custom_instruction_goes_in_the_system_message() -> None:
    """custom puts the user's instruction in the system message, not in the user message."""
    instruction = "Turn this into a haiku about autumn."
    prompt = CATALOG["custom"].prompt(request("custom", text="Leaves fall.",
                                              instruction=instruction))
    assert instruction in prompt.system
    assert instruction not in prompt.user
    assert prompt.instruction == instruction


@pytest.mark.parametrize(
    "instruction",
    [
        "Use {curly} braces",
        "Unbalanced { brace",
        "Unbalanced } brace",
        "{}{0}{1}",
        "{instruction} and {language}",
        "{text.__class__}",
        "%s %(name)s $x ${y}",
    ],
)
def test_braces_in_instruction_do_not_break_formatting(instruction: str) -> None:
    """An instruction with braces or format markers is copied into the system message verbatim."""
    prompt = CATALOG["custom"].prompt(request("custom", instruction=instruction))
    assert f"Follow this instruction from the user about the text: {instruction} " \
        in prompt.system


@pytest.mark.parametrize("language", ["{language}", "Klingon {0}", "} {"])
def test_braces_in_language_do_not_break_formatting(language: str) -> None:
    """A language with braces is copied into the system message verbatim."""
    prompt = CATALOG["translate"].prompt(request("translate", language=language))
    assert f"into {language}, keeping" in prompt.system


def test_braces_in_text_and_title_are_verbatim() -> None:
    """Braces in the text and title reach the user message unchanged."""
    prompt = CATALOG["summarize"].prompt(request("summarize", text="a {b} {{c}}", title="{t}"))
    assert prompt.user == "Title: {t}\n\n<text>\na {b} {{c}}\n</text>"
