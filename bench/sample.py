"""Samples a process tree from /proc: memory (PSS), CPU time, open file descriptors.

The tree is a gunicorn master and its descendants, found by scanning ``/proc/*/stat`` for
parent PIDs, so that whatever the master forks (one worker here, more elsewhere) is counted.

* **PSS** (``Pss:`` in ``/proc/PID/smaps_rollup``): each page divided by the number of processes
  that map it, so the master and a forked worker that still share their pages are not counted
  twice, and the sum over the tree is what the tree costs the machine. User memory only: the
  kernel's socket buffers are not in it.
* **CPU**: ``utime + stime`` (fields 14 and 15 of ``/proc/PID/stat``) over ``SC_CLK_TCK``: user
  and system seconds, the kernel's TCP work done on the process's behalf included.
* **fds**: entries of ``/proc/PID/fd``.
* **kernel TCP memory** (``tcp_mem_kb``): socket buffers, machine-wide (``/proc/net/sockstat``).
* **Redis's own counters** (``redis_info``): ``INFO cpu stats commandstats`` of a redis-server,
  read over a raw socket (no client library), for what Redis itself spends.

Stand-alone: ``python bench/sample.py PID`` prints one JSON snapshot.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name (field 3 is index 0)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read().decode("latin-1")
    return data[data.rindex(")") + 2:].split()


def children(pid: int) -> list[int]:
    """Direct children of ``pid``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if int(_stat_fields(int(name))[1]) == pid:
                found.append(int(name))
        except (OSError, IndexError, ValueError):
            continue
    return found


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (one scan of /proc)."""
    parents: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            ppid = int(_stat_fields(int(name))[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(parents.get(p, ()))
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def memory_kb(pid: int) -> dict[str, int]:
    """``Pss`` and ``Rss`` in KiB from smaps_rollup."""
    out = {}
    with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
        for line in f:
            if line.startswith((b"Pss:", b"Rss:")):
                key, value = line.split()[:2]
                out[key[:-1].decode().lower() + "_kb"] = int(value)
    return out


def fd_count(pid: int) -> int:
    """Open file descriptors of one process."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def process(pid: int) -> dict:
    """One process's figures; raises OSError when it is gone."""
    info = {"pid": pid, "cpu_s": cpu_seconds(pid), "fds": fd_count(pid)}
    info.update(memory_kb(pid))
    return info


def snapshot(root: int) -> dict:
    """Figures of the whole tree under ``root`` and of each process in it."""
    procs = []
    for pid in tree(root):
        try:
            procs.append(process(pid))
        except OSError:
            continue
    return {
        "t": time.monotonic(),
        "pss_kb": sum(p.get("pss_kb", 0) for p in procs),
        "rss_kb": sum(p.get("rss_kb", 0) for p in procs),
        "cpu_s": sum(p["cpu_s"] for p in procs),
        "fds": sum(p["fds"] for p in procs),
        "procs": procs,
    }


def system_cpu() -> dict[str, float]:
    """Busy CPU seconds of the whole machine and of each CPU, and stolen seconds (/proc/stat).

    Busy is user + nice + system + irq + softirq. Compared with what the benchmark's own
    processes used over the same interval, it tells how much of the machine something else
    took: the noise a measurement was made under.
    """
    out: dict[str, float] = {}
    with open("/proc/stat", "rb") as f:
        for line in f:
            if not line.startswith(b"cpu"):
                break
            parts = line.split()
            name = parts[0].decode()
            v = [int(x) for x in parts[1:9]]
            out[name] = (v[0] + v[1] + v[2] + v[5] + v[6]) / CLK_TCK
            if name == "cpu":
                out["steal"] = v[7] / CLK_TCK
    return out


def tcp_mem_kb() -> int | None:
    """The kernel's memory for TCP buffers, all sockets of this network namespace (the
    ``mem`` pages of the ``TCP:`` line of /proc/net/sockstat): what socket buffers cost the
    machine beside the processes' own PSS."""
    try:
        with open("/proc/net/sockstat") as f:
            for line in f:
                if line.startswith("TCP:"):
                    fields = line.split()
                    pages = int(fields[fields.index("mem") + 1])
                    return pages * os.sysconf("SC_PAGE_SIZE") // 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def redis_info(port: int, host: str = "127.0.0.1", timeout: float = 2.0) -> dict:
    """Redis's own counters: ``INFO cpu stats commandstats``, over a raw RESP request.

    What Redis spends is read from Redis itself (as a deployment's Redis would report it), not
    estimated from the client side. Numbers become floats; ``commands`` maps each command to its
    ``calls``, ``usec``, ``failed_calls``, ... Redis 7 counts a command that a Lua script runs
    under its own name (and in ``total_commands_processed``) as well as the ``EVALSHA`` that ran
    it. Raises OSError when Redis does not answer.
    """
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(_resp("INFO", "cpu", "stats", "commandstats"))
        text = _resp_bulk(sock)
    info: dict = {"commands": {}}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep or key.startswith("#"):
            continue
        if key.startswith("cmdstat_"):
            fields = (kv.split("=", 1) for kv in value.split(","))
            info["commands"][key[8:]] = {k: float(v) for k, v in fields}
            continue
        try:
            info[key] = float(value)
        except ValueError:
            info[key] = value
    return info


def _resp(*args: str) -> bytes:
    """One command in Redis's wire format (an array of bulk strings)."""
    out = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        raw = arg.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


def _resp_bulk(sock: socket.socket) -> str:
    """Read one bulk-string reply (INFO's); an error reply raises OSError."""
    buf = b""
    while b"\r\n" not in buf:
        buf += _recv(sock)
    head, _, buf = buf.partition(b"\r\n")
    if not head.startswith(b"$"):
        raise OSError(f"redis answered {head[:200]!r}")
    size = int(head[1:])
    while len(buf) < size:
        buf += _recv(sock)
    return buf[:size].decode("utf-8", "replace")


def _recv(sock: socket.socket) -> bytes:
    data = sock.recv(65536)
    if not data:
        raise OSError("redis closed the connection")
    return data


def worker_of(snap: dict, root: int) -> dict | None:
    """The one worker in a snapshot of a gunicorn tree (the first process that is not the root)."""
    for p in snap["procs"]:
        if p["pid"] != root:
            return p
    return None


if __name__ == "__main__":
    print(json.dumps(snapshot(int(sys.argv[1])), indent=1))
