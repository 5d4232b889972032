"""Who is computing a job, and whether a process is still alive.

Two runs on one folder (two shells, a resubmitted cluster job, Ray workers on several hosts) must
compute each job at most once. A job is claimed with an exclusive ``flock`` on
``<run>/jobs/<hash>.lock``: the kernel drops the lock when its holder exits or is killed (also by
SIGKILL or the OOM killer), so a lock never outlives its process and needs no stale-lock timeout;
on NFS, Linux maps ``flock`` to the server's byte-range locks. The file names the holder
(``host:pid``) for the waiting message and is removed on release; a waiter that wins the lock on
a file removed meanwhile retries on the new one (the classic unlink race).
"""
from __future__ import annotations

import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # Windows: no flock; runs on one folder are then not coordinated
    fcntl = None  # type: ignore[assignment]

HOST = socket.gethostname()


def worker_id() -> str:
    return f"{HOST}:{os.getpid()}"


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    try:  # a zombie (exited, not yet reaped: e.g. re-parented in a container without an init) is dead
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2] not in "ZX"
    except (OSError, ValueError, IndexError):
        return True


def holder_dead(holder: str) -> bool:
    """``host:pid`` names a process of this host that no longer exists."""
    host, _, pid = holder.rpartition(":")
    return host == HOST and pid.isdigit() and not pid_alive(int(pid))


@contextmanager
def file_lock(path: Path, what: str = "", poll: float = 1.0) -> Iterator[None]:
    """Hold ``path`` exclusively for the ``with`` block, waiting while another process holds it."""
    path = Path(path)
    if fcntl is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    told = False
    while True:
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not told:
                holder = os.read(fd, 200).decode(errors="replace").strip() or "another run"
                print(f"waiting for {what or path.name}: being computed by {holder}", file=sys.stderr)
                told = True
            os.close(fd)
            time.sleep(poll)
            continue
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # we locked a file its holder removed on release: lock the current one
    try:
        os.ftruncate(fd, 0)
        os.write(fd, worker_id().encode())
        yield
    finally:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        os.close(fd)  # closing releases the lock
