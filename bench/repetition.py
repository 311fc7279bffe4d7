"""How often the local model repeats itself: ``python bench/repetition.py`` (issue 24, item 5b).

It starts the model server the way gunicorn's master does (:class:`axrisi.modelserver.ModelServer`
with ``AXRISI_LOCAL_MODEL=smollm2``: llama.cpp's server as a child process, on loopback) and
sends it, for each set of request options compared, every command on every text of
``bench/repetition_texts.json`` (12 texts of five sentences on varied topics, each with the
language to translate into and the instruction for ``custom``). The requests are the service's:
the command's prompt from :data:`axrisi.commands.CATALOG` and the body's fields from
:func:`axrisi.providers.local_model_options`, which is what every worker adds to every request
(``summarize`` goes to the model too, as with ``AXRISI_LOCAL_SUMMARY=model``; every text is far
below ``AXRISI_LOCAL_MODEL_INPUT_TOKENS``, so none is cut).

Compared in one run, on the same server:

* ``before``: what the service sent before item 5b: the temperature and seed, and
  ``max_tokens`` 1,024 (the old default of ``AXRISI_LOCAL_MODEL_OUTPUT_TOKENS``);
* ``after``: what it sends now with its defaults (the same temperature and seed, the repetition
  controls and the smaller output cap);
* any ``--config NAME=JSON``: the run's temperature and seed with these fields (for tuning).

The temperature is the service's default (0.2). One answer per text and command is one draw, so
each configuration is run with each of ``--seeds`` (1 2 3: 180 answers), and the seeds are fixed
so that a run can be repeated: each prompt is read from scratch (the server keeps no prompt
cache), so the same request gives the same answer, up to the arithmetic of two slots decoding
together.

For each answer it counts its sentences: split after ``.``, ``!``, ``?`` or ``…`` and at line
breaks, each stripped of spaces and of Markdown's list, heading, quote and emphasis marks,
lowercased, and left out when it has no letter. An answer *repeats a sentence* when one of them
appears 3 times or more (the issue's symptom), and also counted: 2 times or more. Besides:
the mean answer length (characters, tokens), the share that ran to the output cap
(``finish_reason`` "length"), and the share that copies the text (half or more of the answer's
word triples are the text's: for ``translate``, the text given back untranslated), the share
that has a number the text has not (an invented or altered fact), and how many translations are
in the language asked for (more of its common words than of English's: a rough test). It prints
one table per configuration, all commands and each command, and writes every answer to
``bench/results/repetition-<time>.json``.

The model runs in ``--slots`` (2) slots with ``--threads`` (1) thread: modest on a shared
2-core machine. About 23 minutes for ``before`` and ``after`` with the three seeds here; the
latest figures and how the controls were chosen: ``docs/benchmarks.md``, "The local model's
repetitions".
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

from axrisi.commands import CATALOG, RunRequest  # noqa: E402 (after the path is set)
from axrisi.config import Settings  # noqa: E402
from axrisi.modelserver import ModelServer, model_name  # noqa: E402
from axrisi.providers import local_model_options  # noqa: E402

TEXTS = BENCH / "repetition_texts.json"
RESULTS = BENCH / "results"
COMMANDS = ("summarize", "explain", "translate", "rewrite", "custom")
BEFORE_OUTPUT_TOKENS = 1024
"""``AXRISI_LOCAL_MODEL_OUTPUT_TOKENS``'s default before item 5b."""
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+|\n+")
_MARKS = re.compile(r"^(?:[-*+>#•]+|\d+[.)])\s*|[*_`]+")
_WORD = re.compile(r"\w+")
_NUMBER = re.compile(r"\d(?:[\d,.]*\d)?")
_LIST_NUMBER = re.compile(r"^\s*\d+[.)]\s", re.M)
COMMON_WORDS = {
    "English": {"the", "and", "is", "of", "to", "in", "a", "that", "it", "for", "with", "on",
                "are", "was"},
    "French": {"le", "la", "les", "est", "et", "des", "un", "une", "du", "dans", "sur", "pour",
               "qui", "en"},
    "Spanish": {"el", "la", "los", "las", "es", "y", "de", "que", "en", "un", "una", "del", "por",
                "con"},
    "German": {"der", "die", "das", "und", "ist", "ein", "eine", "nicht", "mit", "den", "im",
               "zu", "von", "auf"},
}
"""A language's most common short words: a rough test of what language an answer is in."""


def sentences(answer: str) -> list[str]:
    """The answer's sentences, normalized for counting (see the module's docstring)."""
    found = []
    for piece in _SENTENCE_END.split(answer):
        normal = piece.strip()
        while (stripped := _MARKS.sub("", normal, count=1).strip()) != normal:
            normal = stripped
        normal = normal.strip().lower()
        if any(c.isalpha() for c in normal):
            found.append(normal)
    return found


def most_repeated(answer: str) -> int:
    """How many times the answer's most frequent sentence appears (0: no sentence)."""
    counts = Counter(sentences(answer))
    return max(counts.values(), default=0)


def copies(answer: str, text: str) -> bool:
    """Half or more of the answer's word triples are also the text's."""
    def triples(s: str) -> list[tuple[str, ...]]:
        words = _WORD.findall(s.lower())
        return [tuple(words[i:i + 3]) for i in range(len(words) - 2)]

    mine, theirs = triples(answer), set(triples(text))
    return bool(mine) and sum(t in theirs for t in mine) >= len(mine) / 2


def adds_a_number(answer: str, text: str) -> bool:
    """The answer has a number that the text has not (thousands separators and a numbered
    list's own numbers aside): an invented fact, or a date or amount changed."""
    def numbers(s: str) -> set[str]:
        s = _LIST_NUMBER.sub("", s)
        return {re.sub(r"[,.]", "", n) for n in _NUMBER.findall(s)}

    return bool(numbers(answer) - numbers(text))


def in_language(answer: str, language: str) -> bool:
    """More of the language's common words in the answer than of English's."""
    words = _WORD.findall(answer.lower())
    return sum(w in COMMON_WORDS[language] for w in words) > \
        sum(w in COMMON_WORDS["English"] for w in words)


def service_options(env: dict[str, str]) -> dict[str, Any]:
    """The fields every worker adds to a request's body, for these settings."""
    return local_model_options(Settings.from_env({"JWT_SECRET_KEY": "s" * 32,
                                                  "AXRISI_LOCAL_MODEL": "smollm2", **env}))


def configurations(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Name -> the request options compared (all with the run's temperature; the seed is
    each run's)."""
    env = {"AXRISI_LOCAL_MODEL_TEMPERATURE": str(args.temperature)}
    base = {"temperature": args.temperature}
    known = {"before": {**base, "max_tokens": BEFORE_OUTPUT_TOKENS},
             "after": service_options(env)}
    chosen: dict[str, dict[str, Any]] = {}
    for name in args.only or ():
        chosen[name] = known[name]
    for item in args.config:
        name, _, fields = item.partition("=")
        chosen[name] = {**base, **json.loads(fields)}
    return chosen or known


def requests_of(text: dict[str, str]) -> Iterator[tuple[str, RunRequest]]:
    for command in COMMANDS:
        fields = {"language": text["language"]} if command == "translate" else \
            {"instruction": text["instruction"]} if command == "custom" else {}
        yield command, RunRequest(command=command, text=text["text"], **fields)


def ask(server: ModelServer, name: str, options: dict[str, Any],
        request: RunRequest) -> dict[str, Any]:
    """One answer, not streamed (llama.cpp samples the same tokens as for the service's
    stream of it)."""
    prompt = CATALOG[request.command].prompt(request)
    body = {"model": name, "messages": [{"role": "system", "content": prompt.system},
                                        {"role": "user", "content": prompt.user}], **options}
    started = time.monotonic()
    response = requests.post(server.url + "/chat/completions", json=body, timeout=900,
                             headers={"Authorization": f"Bearer {server.key}"})
    response.raise_for_status()
    answer = response.json()
    choice = answer["choices"][0]
    return {"content": choice["message"]["content"] or "",
            "finish": choice["finish_reason"],
            "tokens": answer["usage"]["completion_tokens"],
            "seconds": round(time.monotonic() - started, 2)}


def figures(rows: list[dict[str, Any]]) -> dict[str, float]:
    n = len(rows)
    return {"answers": n,
            "repeat3": sum(r["repeated"] >= 3 for r in rows) / n,
            "repeat2": sum(r["repeated"] >= 2 for r in rows) / n,
            "chars": sum(len(r["content"]) for r in rows) / n,
            "tokens": sum(r["tokens"] for r in rows) / n,
            "capped": sum(r["finish"] == "length" for r in rows) / n,
            "copies": sum(r["copies"] for r in rows) / n,
            "adds_number": sum(r["adds_number"] for r in rows) / n,
            "translated": sum(r["translated"] for r in rows) / n}


def table(name: str, options: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    lines = [f"### {name}: {json.dumps(options)}, seeds as above", "",
             "| commands | answers | a sentence 3+ times | 2+ times | mean length (chars) "
             "| mean tokens | at the cap | copies the text | adds a number |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    groups = [("all", rows)] + [(c, [r for r in rows if r["command"] == c]) for c in COMMANDS]
    groups.append(("all but summarize", [r for r in rows if r["command"] != "summarize"]))
    for label, group in groups:
        f = figures(group)
        lines.append(f"| {label} | {f['answers']} | {f['repeat3']:.0%} | {f['repeat2']:.0%} "
                     f"| {f['chars']:,.0f} | {f['tokens']:.0f} | {f['capped']:.0%} "
                     f"| {f['copies']:.0%} | {f['adds_number']:.0%} |")
    translations = [r for r in rows if r["command"] == "translate"]
    lines.append(f"\ntranslations in the language asked for: "
                 f"{sum(r['translated'] for r in translations)} of {len(translations)}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", choices=("before", "after"),
                        help="the known configurations to run (default: both, unless "
                             "--config is given)")
    parser.add_argument("--config", action="append", default=[], metavar="NAME=JSON",
                        help="another set of request fields, e.g. "
                             "'dry={\"max_tokens\": 400, \"dry_multiplier\": 0.8}'")
    parser.add_argument("--temperature", type=float, default=0.2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--texts", type=Path, default=TEXTS)
    args = parser.parse_args()

    configs = configurations(args)
    texts = json.loads(args.texts.read_text())
    longest = max(int(o.get("max_tokens", BEFORE_OUTPUT_TOKENS)) for o in configs.values())
    server = ModelServer("smollm2", input_tokens=1024, output_tokens=longest,
                         slots=args.slots, threads=args.threads)
    server.start()
    print(f"# {server.describe()}; {len(texts)} texts x {len(COMMANDS)} commands, "
          f"temperature {args.temperature}, seeds {args.seeds}", flush=True)
    name = model_name("smollm2")
    results: dict[str, Any] = {"model": server.describe(), "temperature": args.temperature,
                               "seeds": args.seeds, "configs": {}}
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"repetition-{time.strftime('%Y%m%d-%H%M%S')}.json"
    try:
        for config, options in configs.items():
            jobs = [(seed, t, c, r) for seed in args.seeds for t in texts
                    for c, r in requests_of(t)]
            started = time.monotonic()
            with ThreadPoolExecutor(args.slots) as pool:
                answers = list(pool.map(ask, [server] * len(jobs), [name] * len(jobs),
                                        [{**options, "seed": seed} for seed, *_ in jobs],
                                        [r for *_, r in jobs]))
            rows = [{"seed": seed, "topic": t["topic"], "command": c, **a,
                     "repeated": most_repeated(a["content"]),
                     "copies": copies(a["content"], t["text"]),
                     "adds_number": adds_a_number(a["content"], t["text"]),
                     "translated": c == "translate" and in_language(a["content"],
                                                                    t["language"])}
                    for (seed, t, c, _), a in zip(jobs, answers, strict=True)]
            results["configs"][config] = {"options": options, "rows": rows,
                                          "seconds": round(time.monotonic() - started, 1)}
            out.write_text(json.dumps(results, indent=1, ensure_ascii=False))
            print(f"\n{table(config, options, rows)}\n\n({time.monotonic() - started:.0f} s)",
                  flush=True)
    finally:
        server.stop()
    print(f"\nevery answer: {os.path.relpath(out, ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
