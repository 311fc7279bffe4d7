"""README.md's "Settings" table says what axrisi/config.py does: the same variables and defaults.

The variables the code reads are collected twice: from the environment mapping that
``Settings.from_env`` is given (a recorder that notes every key looked up), and from config.py's
source (every ``e.<method>("NAME", ...)`` call in ``from_env``). A code default is the value a
setting has in a valid environment that does not set the variable. The table's default column is
compared with it wherever it is one plain value (a number, one `code` word, "unset" / "none");
prose defaults are skipped only when listed below with the reason. deploy/systemd/env.example is
held to the same: it names only documented settings, and the defaults it says it shows are the
code's.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from axrisi.config import Settings

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CONFIG = ROOT / "axrisi" / "config.py"
GUNICORN_CONF = ROOT / "gunicorn.conf.py"
ENV_EXAMPLE = ROOT / "deploy" / "systemd" / "env.example"

READ_ELSEWHERE = {
    "PROMETHEUS_MULTIPROC_DIR": "gunicorn.conf.py makes it (a fresh temp directory) or empties "
                                "it; prometheus-client's multiprocess mode reads it",
    "LOG_LEVEL": "gunicorn.conf.py: gunicorn's loglevel",
    "GEVENT_TRACK_GREENLET_TREE": "gunicorn.conf.py sets its default; gevent reads it",
}
"""Documented variables that Settings.from_env does not read, and who reads them instead."""

INTERNAL = {
    "AXRISI_MODEL_SERVER_URL": "set by gunicorn's master for its workers (axrisi/modelserver.py)",
    "AXRISI_MODEL_SERVER_KEY": "made up by gunicorn's master for the run (axrisi/modelserver.py)",
}
"""Read by Settings.from_env but set by the service itself, not by operators: the table may
list them or not."""

PROSE_DEFAULTS = {
    "AXRISI_PROVIDER": "depends on OPENAI_API_KEY / OPENAI_BASE_URL: checked by "
                       "test_provider_default_is_as_documented",
    "AXRISI_MAX_STREAMS": "sized to the machine's memory (config.default_max_streams)",
    "PROMETHEUS_MULTIPROC_DIR": "a fresh temp directory per run, made by gunicorn.conf.py",
    "AXRISI_MODEL_SERVER_URL": "internal: set by the master",
    "AXRISI_MODEL_SERVER_KEY": "internal: set by the master",
}
"""Rows whose default is prose, not one value to compare."""

FIELD = {"AXRISI_ENV": "env"}
"""Settings fields not named after their variable (``AXRISI_X_Y`` or ``X_Y`` -> ``x_y``)."""

BASES: tuple[dict[str, str], ...] = (
    {"JWT_SECRET_KEY": "s" * 32},
    {"AXRISI_ENV": "development"},
)
"""Valid environments, each as small as can be: a variable's code default is its value in the
first of these that does not set it."""

UNSET = {"unset", "none"}

NOT_SETTINGS = {"HF_TOKEN": "read by huggingface_hub in the model server, for gated Hub models"}
"""Variables deploy/systemd/env.example may name that are not the service's settings."""

ENV_EXAMPLE_EXAMPLES = {"AXRISI_TOKEN_QUOTA": "no quota by default: the line is an example, "
                                              "and its comment says so"}
"""Lines of env.example's "(defaults shown)" blocks that show an example instead."""


class RecordingEnviron(Mapping[str, str]):
    """An environment that notes every variable looked up in it."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self.data = dict(values)
        self.looked_up: set[str] = set()

    def __getitem__(self, key: str) -> str:  # Mapping's get() and `in` come through here
        self.looked_up.add(key)
        return self.data[key]

    def __iter__(self) -> Iterator[str]:
        raise AssertionError("config.py iterates over the environment: this test cannot tell "
                             "which variables it reads")

    def __len__(self) -> int:
        return len(self.data)


def recorded_reads() -> set[str]:
    """Variables Settings.from_env looks up, over environments that take each branch."""
    seen: set[str] = set()
    for values in ({"AXRISI_ENV": "development"}, {"JWT_SECRET_KEY": "s" * 32},
                   {"AXRISI_ENV": "development", "JWT_JWKS_URL": "https://idp.example/jwks"},
                   {"AXRISI_ENV": "development", "OPENAI_API_KEY": "sk-x"}):
        environ = RecordingEnviron(values)
        Settings.from_env(environ)
        seen |= environ.looked_up
    return seen


def static_reads() -> set[str]:
    """The NAME of every ``e.<method>("NAME", ...)`` call in config.py's ``from_env``."""
    tree = ast.parse(CONFIG.read_text())
    from_env = next(node for node in ast.walk(tree)
                    if isinstance(node, ast.FunctionDef) and node.name == "from_env")
    names = set()
    for node in ast.walk(from_env):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "e"
                and node.args and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)):
            names.add(node.args[0].value)
    return names


def read_by_settings() -> set[str]:
    return recorded_reads() | static_reads()


def settings_rows(readme: str | None = None) -> list[tuple[list[str], str]]:
    """The table of README.md's "## Settings" section: (variables, default cell) per row."""
    text = README.read_text() if readme is None else readme
    section = text.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
        assert len(cells) == 3, f"a Settings row without three cells: {line}"
        names = re.findall(r"`([A-Z][A-Z0-9_]*)`", cells[0])
        assert names, f"a Settings row that names no variable: {line}"
        rows.append((names, cells[1]))
    assert rows, "README.md has no Settings table"
    return rows


def documented(readme: str | None = None) -> dict[str, str]:
    """Each documented variable and its default cell (the whole cell, for rows of several)."""
    table: dict[str, str] = {}
    for names, default in settings_rows(readme):
        for name in names:
            assert name not in table, f"{name} is in README.md's Settings table twice"
            table[name] = default
    return table


def plain_defaults(readme: str | None = None) -> dict[str, str | None]:
    """Each variable's documented default when it is one plain value, else None (prose)."""
    result: dict[str, str | None] = {}
    for names, cell in settings_rows(readme):
        # "unset (key and model: the primary's)": the words in brackets qualify, not change it.
        head = re.sub(r"\s*\(.*\)\s*$", "", cell).strip()
        parts = [part.strip() for part in head.split(", ")]
        if len(parts) == 1:
            parts = parts * len(names)
        for index, name in enumerate(names):
            part = parts[index] if len(parts) == len(names) else ""  # else: prose
            plain = (part.lower() in UNSET or re.fullmatch(r"`[^`]+`", part) is not None
                     or re.fullmatch(r"-?\d[\d,]*(\.\d+)?", part) is not None)
            result[name] = part.strip("`") if plain else None
    return result


def code_default(name: str) -> Any:
    """The value Settings gives the variable in a valid environment that does not set it."""
    field = FIELD.get(name, name.removeprefix("AXRISI_").lower())
    base = next(values for values in BASES if name not in values)
    settings = Settings.from_env(base)
    assert hasattr(settings, field), (f"{name}: no Settings field {field!r}; add the variable's "
                                      "field to FIELD in this test")
    return getattr(settings, field)


def gunicorn_conf_defaults() -> dict[str, str | None]:
    """``os.environ.get(NAME[, default])`` and ``os.environ.setdefault(NAME, default)`` in
    gunicorn.conf.py, with their literal defaults (None: no default)."""
    found: dict[str, str | None] = {}
    for node in ast.walk(ast.parse(GUNICORN_CONF.read_text())):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("get", "setdefault")
                and ast.unparse(node.func.value) == "os.environ"
                and node.args and isinstance(node.args[0], ast.Constant)):
            default = node.args[1] if len(node.args) > 1 else None
            value = default.value if isinstance(default, ast.Constant) else None
            found.setdefault(str(node.args[0].value), None if value is None else str(value))
    return found


def same(documented_default: str, value: Any) -> bool:
    """Does a plain documented default say ``value``?"""
    if documented_default.lower() in UNSET:
        return value is None or value == "" or value == ()
    if isinstance(value, bool):  # a switch: documented as 1 or 0, as it is set
        return documented_default == ("1" if value else "0")
    if value is None or isinstance(value, (tuple, list)):
        return False
    if isinstance(value, (int, float)):
        try:
            return float(documented_default.replace(",", "")) == value
        except ValueError:
            return False
    return documented_default == str(value)


# ---------------------------------------------------------------------------------------------


def test_the_recorder_sees_every_read_in_the_source() -> None:
    """The two ways of collecting the variables agree (else one of them misses reads)."""
    recorded, static = recorded_reads(), static_reads()
    assert recorded == static, (f"looked up, not in an e.<method>(NAME) call: {recorded - static}; "
                                f"in such a call but not looked up: {static - recorded}")


def test_every_variable_the_code_reads_is_documented() -> None:
    missing = read_by_settings() - set(documented()) - set(INTERNAL)
    assert not missing, f"read by axrisi/config.py but not in README.md's Settings: {missing}"


def test_every_documented_variable_is_read() -> None:
    unread = set(documented()) - read_by_settings() - set(READ_ELSEWHERE)
    assert not unread, f"in README.md's Settings but read by nothing: {unread}"


def test_variables_read_elsewhere_are_read_there() -> None:
    """The allowances above are true: gunicorn.conf.py names each of them."""
    in_conf = gunicorn_conf_defaults()
    assert set(READ_ELSEWHERE) <= set(in_conf), set(READ_ELSEWHERE) - set(in_conf)
    assert not set(READ_ELSEWHERE) & read_by_settings()
    assert set(INTERNAL) <= read_by_settings()


def test_documented_defaults_are_the_codes() -> None:
    wrong = []
    for name, default in plain_defaults().items():
        if default is None:
            continue
        if name in READ_ELSEWHERE:
            value: Any = gunicorn_conf_defaults()[name]
        else:
            value = code_default(name)
        if not same(default, value):
            wrong.append(f"{name}: README.md says {default!r}, the code gives {value!r}")
    assert not wrong, "\n".join(wrong)


def test_prose_defaults_are_the_listed_ones() -> None:
    """A default the test cannot compare is a decision: it must be listed, with its reason."""
    prose = {name for name, default in plain_defaults().items() if default is None}
    assert prose == set(PROSE_DEFAULTS) & set(documented()), (
        f"prose defaults not listed: {prose - set(PROSE_DEFAULTS)}; "
        f"listed but plain or gone: {set(PROSE_DEFAULTS) & set(documented()) - prose}")


def test_provider_default_is_as_documented() -> None:
    """`openai` with a key or base URL, else `local`."""
    assert documented()["AXRISI_PROVIDER"] == "`openai` with a key or base URL, else `local`"
    base = BASES[0]
    assert Settings.from_env(base).provider == "local"
    assert Settings.from_env({**base, "OPENAI_API_KEY": "sk-x"}).provider == "openai"
    assert Settings.from_env({**base, "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}).provider == (
        "openai")


def env_example_lines() -> list[tuple[str, str, bool]]:
    """deploy/systemd/env.example's ``NAME=value`` lines, commented out or not: (name, value
    without the quotes systemd strips, whether it shows the default). A ``# --- ...`` section
    whose heading says "(defaults shown)" shows defaults to its end; a comment that says it, to
    the next blank line."""
    found, section, paragraph = [], False, False
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.startswith("# ---"):
            section, paragraph = "(defaults shown)" in line, False
        elif not line.strip():
            paragraph = False
        elif line.startswith("#") and "(defaults shown)" in line:
            paragraph = True
        match = re.match(r"^#?([A-Z][A-Z0-9_]*)=(.*)$", line)
        if match:
            value = match.group(2)
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
            found.append((match.group(1), value, section or paragraph))
    return found


def test_env_example_names_only_documented_settings() -> None:
    names = {name for name, _, _ in env_example_lines()}
    assert names, "no NAME=value lines in deploy/systemd/env.example"
    unknown = names - set(documented()) - set(NOT_SETTINGS)
    assert not unknown, f"in deploy/systemd/env.example but not in README.md's Settings: {unknown}"


def test_env_example_defaults_shown_are_the_codes() -> None:
    wrong, shown = [], 0
    for name, value, in_defaults in env_example_lines():
        if not in_defaults or name in ENV_EXAMPLE_EXAMPLES:
            continue
        shown += 1
        if not same(value or "unset", code_default(name)):
            wrong.append(f"{name}: env.example shows {value!r}, the code gives "
                         f"{code_default(name)!r}")
    assert shown, "no \"(defaults shown)\" block found in deploy/systemd/env.example"
    assert not wrong, "\n".join(wrong)
