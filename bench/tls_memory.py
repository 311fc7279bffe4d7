"""What a held TLS connection to the model costs in memory, layer by layer, on this machine's
OpenSSL: the floor under the service's memory per stream on an HTTPS upstream.

Each figure is measured in a fresh child process (gevent monkey-patched, as a worker is): it
opens ``--connections`` client connections to a loopback server that answers every request
with a streamed response's head and first chunk and then holds the connection, reads that
much on each, and reports the growth of its PSS and of malloc's bytes in use (glibc
``mallinfo2``) divided by the connections. The servers are asyncio with Python's ``ssl`` (an
OpenSSL server, as most model servers' TLS terminators are): plain, TLS 1.3 with OpenSSL's
default two session tickets after the handshake, TLS 1.3 with none, and TLS 1.2.

    .venv/bin/python bench/tls_memory.py                    # 2,000 connections: about 1 minute
    .venv/bin/python bench/tls_memory.py --connections 500

The service's own figure per held stream on HTTPS is ``run.py``'s ``held_tls`` scenario; this
says how much of it is OpenSSL's, which no code of ours can give back while the stream is open.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tlscert

SERVER = r'''
import asyncio, ssl, sys
HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
CHUNK = b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'
class Held(asyncio.Protocol):
    def connection_made(self, transport): self.transport, self.seen = transport, b""
    def data_received(self, data):
        self.seen += data
        if b"\r\n\r\n" in self.seen:
            self.transport.write(HEAD + b"%x\r\n" % len(CHUNK) + CHUNK + b"\r\n")
async def main(port, mode, cert, key):
    context = None
    if mode != "plain":
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        if mode == "tls13-no-tickets":
            context.num_tickets = 0
        if mode == "tls12":
            context.maximum_version = ssl.TLSVersion.TLSv1_2
    await asyncio.get_running_loop().create_server(Held, "127.0.0.1", port, ssl=context,
                                                   backlog=4096)
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]))
'''

MODES = ["plain", "tls13", "tls13-no-tickets", "tls12"]
CASES = [("plain", False), ("tls13", False), ("tls13-no-tickets", False), ("tls12", False),
         ("plain", True), ("tls13", True)]


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _malloc_in_use() -> int:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)


def _pss() -> int:
    with open("/proc/self/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no Pss in smaps_rollup")


def child(port: int, tls: bool, greenlet: bool, count: int) -> dict[str, float]:
    """In a fresh process: open, read and hold ``count`` connections; the growth per one."""
    from gevent import monkey

    monkey.patch_all()
    import gc
    import socket
    import ssl

    import gevent

    context = ssl.create_default_context() if tls else None  # SSL_CERT_FILE: the test cert
    request = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"
               b"content-length: 2\r\n\r\n{}")

    def open_one() -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", port))
        if context is not None:
            sock = context.wrap_socket(sock, server_hostname="127.0.0.1")
        sock.sendall(request)
        seen = b""
        while not seen.endswith(b"\n\n\r\n"):
            seen += sock.recv(65536)
        return sock

    warm = [open_one() for _ in range(20)]
    for sock in warm:
        sock.close()
    gc.collect()
    pss, in_use = _pss(), _malloc_in_use()
    held = [open_one() for _ in range(count)]
    readers = [gevent.spawn(sock.recv, 65536) for sock in held] if greenlet else []
    gevent.sleep(0.5)
    gc.collect()
    result = {"pss_kb": (_pss() - pss) / count / 1024,
              "malloc_kb": (_malloc_in_use() - in_use) / count / 1024}
    gevent.killall(readers)
    for sock in held:
        sock.close()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        port, tls, greenlet = int(args.child[0]), args.child[1] == "1", args.child[2] == "1"
        print(json.dumps(child(port, tls, greenlet, args.connections)))
        return 0
    import ssl

    directory = Path(tempfile.mkdtemp(prefix="axrisi-tls-memory-"))
    cert, key = tlscert.make(directory)
    servers, ports = [], {}
    try:
        for index, mode in enumerate(MODES):
            port = 9750 + index
            proc = subprocess.Popen([sys.executable, "-c", SERVER, str(port), mode, str(cert),
                                     str(key)], stdout=subprocess.PIPE)
            assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
            servers.append(proc)
            ports[mode] = port
        env = {**os.environ, "SSL_CERT_FILE": str(cert)}
        print(f"{ssl.OPENSSL_VERSION}; {args.connections} connections held per figure; "
              f"{time.strftime('%Y-%m-%d %H:%M')}\n")
        print("| server | a greenlet blocked on each | KB PSS per connection | "
              "KB malloc in use per connection |")
        print("| --- | --- | --- | --- |")
        for mode, greenlet in CASES:
            out = subprocess.run(
                [sys.executable, __file__, "--connections", str(args.connections), "--child",
                 str(ports[mode]), "0" if mode == "plain" else "1", "1" if greenlet else "0"],
                env=env, capture_output=True, text=True, check=True, timeout=300)
            figure = json.loads(out.stdout)
            print(f"| {mode} | {'yes' if greenlet else 'no'} | {figure['pss_kb']:.1f} | "
                  f"{figure['malloc_kb']:.1f} |", flush=True)
    finally:
        for proc in servers:
            proc.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
