"""A TCP proxy of the tests' own that can stall, slow down or cut the connections through it.

Why not toxiproxy or iptables: the tests must run as an ordinary user on a bare machine, and a
fault must start and end at a moment the test chooses, to within a few milliseconds. One
selector thread moves every byte, so the order of bytes per direction is kept by construction,
and nothing busy-loops: the thread sleeps in ``select`` until a socket is ready, a held chunk
falls due, or a test changes the faults (a wake-up socket).
"""

from __future__ import annotations

import collections
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable

READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
_RST = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset, not a FIN


class _Side:
    """One socket and what is on its way to it: chunks not yet due, then bytes being written."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self.out = b""
        self.done = False  # this socket sent EOF: no more reads from it
        self.events = 0  # what the selector watches on it now
        sock.setblocking(False)


class _Pipe:
    """A client connection and its connection to the target."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client, self.upstream = _Side(client), _Side(upstream)
        self.sides = (self.client, self.upstream)

    def other(self, side: _Side) -> _Side:
        return self.upstream if side is self.client else self.client


class FaultProxy:
    """Forwards 127.0.0.1:<port> to 127.0.0.1:<target_port>, with faults on demand."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.setblocking(False)
        self.port: int = self.listener.getsockname()[1]
        self.latency = 0.0
        self.stall_until = 0.0
        self.pipes: set[_Pipe] = set()
        self.selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_w.setblocking(False)
        self._calls: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._closing = False
        self._thread = threading.Thread(target=self._loop, name="faultproxy", daemon=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    # The faults -------------------------------------------------------------------------------

    def stall(self, seconds: float) -> None:
        """From now on, for ``seconds``, move no byte (held bytes go afterwards, in order)."""
        self.stall_until = time.monotonic() + seconds
        self._wake()

    def stalled(self, seconds: float) -> None:
        """:meth:`stall`, returning when the stall is over."""
        self.stall(seconds)
        time.sleep(seconds)

    def set_latency(self, seconds: float) -> None:
        """Deliver every chunk read from either side ``seconds`` later (0: at once)."""
        self.latency = max(0.0, seconds)
        self._wake()

    def heal(self) -> None:
        """No stall and no latency any more (bytes already held go at once)."""
        self.stall_until, self.latency = 0.0, 0.0
        self._wake()

    def cut(self) -> None:
        """Reset every current connection on both sides; new ones are still accepted."""
        self._on_loop(lambda: [self._close(pipe, reset=True) for pipe in list(self.pipes)])

    # Life -------------------------------------------------------------------------------------

    def __enter__(self) -> FaultProxy:
        self.selector.register(self.listener, READ, None)
        self.selector.register(self._wake_r, READ, None)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closing = True
        self._wake()
        self._thread.join(5)
        for pipe in list(self.pipes):
            self._close(pipe, reset=True)
        for sock in (self.listener, self._wake_r, self._wake_w):
            sock.close()
        self.selector.close()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:  # closed, or its buffer is full of wake-ups already
            pass

    def _on_loop(self, call: Callable[[], object]) -> None:
        """Run ``call`` on the proxy's thread (it owns the sockets) and wait for it."""
        done = threading.Event()
        with self._lock:
            self._calls.append(lambda: (call(), done.set()))
        self._wake()
        if not done.wait(5):
            raise RuntimeError("the fault proxy's thread did not answer")

    # The loop ---------------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._closing:
            for key, _ in self.selector.select(self._timeout()):
                if key.fileobj is self.listener:
                    self._accept()
                elif key.fileobj is self._wake_r:
                    self._wake_r.recv(4096)
                elif key.data in self.pipes:  # (not closed earlier in this round)
                    self._read(key.data, key.fileobj)
            with self._lock:
                calls, self._calls = self._calls, []
            for call in calls:
                call()
            stalled = time.monotonic() < self.stall_until
            if not stalled:
                self._deliver()
            self._watch(stalled)

    def _timeout(self) -> float | None:
        """Seconds until something falls due: the stall's end, or the first held chunk."""
        now = time.monotonic()
        if now < self.stall_until:
            return self.stall_until - now
        dues = [side.queue[0][0] for pipe in self.pipes for side in pipe.sides if side.queue]
        return max(0.0, min(dues) - now) if dues else None

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except BlockingIOError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=1.0)
            except OSError:  # the target is down: the client learns it at once
                client.close()
                continue
            self.pipes.add(_Pipe(client, upstream))

    def _read(self, pipe: _Pipe, sock: object) -> None:
        """Take what one socket sent (stalled or not) and hold it for the other side."""
        side = pipe.client if sock is pipe.client.sock else pipe.upstream
        if side.done:
            return  # a write-readiness report for a socket that no longer reads
        try:
            data = side.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(pipe, reset=True)
            return
        if data:
            pipe.other(side).queue.append((time.monotonic() + self.latency, data))
        else:
            side.done = True

    def _deliver(self) -> None:
        """Write whatever is due; close a pair once what its EOF-sender sent is delivered."""
        now = time.monotonic()
        for pipe in list(self.pipes):
            for side in pipe.sides:
                while side.queue and side.queue[0][0] <= now:
                    side.out += side.queue.popleft()[1]
                if side.out:
                    try:
                        side.out = side.out[side.sock.send(side.out):]
                    except (BlockingIOError, InterruptedError):
                        pass
                    except OSError:
                        self._close(pipe, reset=True)
                        break
            else:
                if any(s.done and not (o := pipe.other(s)).queue and not o.out
                       for s in pipe.sides):
                    self._close(pipe, reset=False)

    def _watch(self, stalled: bool) -> None:
        """Watch reads until EOF, writes while bytes wait (never while stalled: no busy loop)."""
        for pipe in self.pipes:
            for side in pipe.sides:
                want = (0 if side.done else READ) | (WRITE if side.out and not stalled else 0)
                if want == side.events:
                    continue
                if not side.events:
                    self.selector.register(side.sock, want, pipe)
                elif not want:
                    self.selector.unregister(side.sock)
                else:
                    self.selector.modify(side.sock, want, pipe)
                side.events = want

    def _close(self, pipe: _Pipe, reset: bool) -> None:
        self.pipes.discard(pipe)
        for side in pipe.sides:
            if side.events:
                self.selector.unregister(side.sock)
                side.events = 0
            if reset:
                try:
                    side.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST)
                except OSError:
                    pass
            side.sock.close()
