"""The npm package in client/: a copy of the served axrisi-client.js, its hand-written TypeScript
declarations and package.json.

The npm tests pack the package, install the tarball into a temporary copy of
client/consumer-check (``npm ci`` from its lock, TypeScript pinned there) and compile a strict
consumer with it; they also run ``tsc --checkJs`` on the module. They skip on a machine without
Node.js and npm, and fail under ``CI=true`` (a green CI must not hide a check that never ran).
Nothing is written into the repository: no node_modules, no tarball.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.servers import require_binary

ROOT = Path(__file__).resolve().parents[1]
CLIENT = ROOT / "client"
SERVED = ROOT / "axrisi" / "static" / "axrisi-client.js"
DECLARATIONS = CLIENT / "axrisi-client.d.ts"
CHECK = CLIENT / "consumer-check"
TYPESCRIPTS = {"7": "typescript", "5": "typescript-5"}
"""The consumer check's TypeScript versions, by their folder in node_modules: the current
compiler, and the last 5.x that many projects still use."""


def test_package_copy_of_the_client_is_current() -> None:
    """client/axrisi-client.js is the served module, byte for byte (client/sync-client.sh)."""
    assert (CLIENT / "axrisi-client.js").read_bytes() == SERVED.read_bytes(), (
        "run client/sync-client.sh")


def test_package_json_is_an_esm_package_with_types_and_no_dependencies() -> None:
    meta = json.loads((CLIENT / "package.json").read_text())
    assert (meta["name"], meta["version"], meta["type"]) == ("axrisi-client", "0.1.0", "module")
    assert meta["exports"]["."] == {"types": "./axrisi-client.d.ts",
                                    "default": "./axrisi-client.js"}
    assert next(iter(meta["exports"]["."])) == "types", "the types condition must come first"
    assert meta["types"] == "./axrisi-client.d.ts"
    assert sorted(meta["files"]) == ["axrisi-client.d.ts", "axrisi-client.js"]
    for key in ("dependencies", "peerDependencies", "optionalDependencies", "devDependencies"):
        assert key not in meta
    # The repository has no licence: the package says so and cannot be published by accident.
    assert meta["license"] == "UNLICENSED" and meta["private"] is True


def test_consumer_check_pins_exact_versions_in_its_lock() -> None:
    manifest = json.loads((CHECK / "package.json").read_text())
    lock = json.loads((CHECK / "package-lock.json").read_text())
    pins = manifest["devDependencies"]
    assert set(pins) == set(TYPESCRIPTS.values())
    for name, spec in pins.items():
        version = spec.rsplit("@", 1)[-1]
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"{name} is not pinned: {spec}"
        assert lock["packages"][f"node_modules/{name}"]["version"] == version
    assert lock["packages"][""]["devDependencies"] == pins


def declared_exports() -> dict[str, str]:
    """The value exports the declarations name: {name: "const" | "class" | "function"}."""
    found = re.findall(r"^export declare (const|class|function) (\w+)", DECLARATIONS.read_text(),
                       flags=re.MULTILINE)
    return {name: kind for kind, name in found}


def test_declarations_never_say_any() -> None:
    """`any` nowhere in the declarations (comments aside): open shapes are `unknown`."""
    code = re.sub(r"/\*.*?\*/", "", DECLARATIONS.read_text(), flags=re.DOTALL)
    code = re.sub(r"//[^\n]*", "", code)
    assert not re.search(r"\bany\b", code)
    assert "unknown" in code
    assert len(declared_exports()) == 15


# ---- With Node.js and npm --------------------------------------------------------------------


@dataclass
class Consumer:
    node: str
    folder: Path
    """The temporary copy of client/consumer-check, the packed package installed in it."""
    packed: list[str]
    """The files in the tarball."""

    def tsc(self, version: str, *args: str) -> subprocess.CompletedProcess[str]:
        compiler = self.folder / "node_modules" / TYPESCRIPTS[version] / "bin" / "tsc"
        return subprocess.run([self.node, str(compiler), *args], cwd=self.folder,
                              capture_output=True, text=True, timeout=100)


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "npm_config_update_notifier": "false", "npm_config_audit": "false",
           "npm_config_fund": "false"}
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def consumer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Consumer]:
    """client/ copied to a temporary folder, packed with ``npm pack``; consumer-check's pinned
    TypeScript installed with ``npm ci``, then the tarball with ``npm install --no-save``."""
    npm = require_binary("npm", package="nodejs and npm")
    node = require_binary("node", package="nodejs")
    base = tmp_path_factory.mktemp("client-package")
    client = base / "client"
    shutil.copytree(CLIENT, client, ignore=shutil.ignore_patterns("node_modules", "*.tgz"))
    folder = client / "consumer-check"
    run([npm, "ci", "--no-audit", "--no-fund"], folder)
    packed = json.loads(run([npm, "pack", str(client), "--pack-destination", str(base), "--json"],
                            base).stdout)[0]
    run([npm, "install", "--no-save", "--no-audit", "--no-fund", str(base / packed["filename"])],
        folder)
    # Installing the tarball must leave the lock as committed (what `npm ci` checks on CI).
    assert (folder / "package-lock.json").read_bytes() == (CHECK / "package-lock.json").read_bytes()
    yield Consumer(node=node, folder=folder, packed=sorted(f["path"] for f in packed["files"]))


def test_the_tarball_holds_the_module_its_declarations_and_package_json(
        consumer: Consumer) -> None:
    """Those, and the README npm always adds: not the sync script or the consumer check."""
    assert consumer.packed == ["README.md", "axrisi-client.d.ts", "axrisi-client.js",
                               "package.json"]
    installed = consumer.folder / "node_modules" / "axrisi-client"
    assert (installed / "axrisi-client.js").read_bytes() == SERVED.read_bytes()
    assert (installed / "axrisi-client.d.ts").read_bytes() == DECLARATIONS.read_bytes()


def test_every_export_of_the_module_is_declared_and_nothing_more(consumer: Consumer) -> None:
    """The module's exports, imported by Node through the package's name, match the declared
    classes, functions and constants."""
    script = """
      const module = await import("axrisi-client");
      const kind = (value) => typeof value !== "function" ? "const"
        : /^class\\b/.test(Function.prototype.toString.call(value)) ? "class" : "function";
      console.log(JSON.stringify(Object.fromEntries(
        Object.entries(module).map(([name, value]) => [name, kind(value)]))));
    """
    done = subprocess.run([consumer.node, "--input-type=module", "-e", script],
                          cwd=consumer.folder, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == declared_exports()


@pytest.mark.parametrize("version", sorted(TYPESCRIPTS))
@pytest.mark.parametrize("config", ["tsconfig.json", "tsconfig.nodenext.json"])
def test_a_strict_typescript_consumer_compiles_against_the_package(
        consumer: Consumer, version: str, config: str) -> None:
    """consumer.ts uses every export with types, asserts that none is `any`, and its
    `@ts-expect-error` misuses must fail: too loose a declaration fails the compile."""
    done = consumer.tsc(version, "--noEmit", "-p", config)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "@ts-expect-error" in (CHECK / "consumer.ts").read_text()


@pytest.mark.parametrize("version", sorted(TYPESCRIPTS))
def test_the_module_is_consistent_with_its_jsdoc(consumer: Consumer, version: str) -> None:
    """``tsc --checkJs`` with ``strict`` (implicit any included) on axrisi-client.js itself."""
    done = consumer.tsc(version, "--noEmit", "-p", "tsconfig.checkjs.json")
    assert done.returncode == 0, done.stdout + done.stderr
