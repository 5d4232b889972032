"""Peak machine memory of a command: ``python -m benchmarks.memprobe [--out F.json] -- CMD ...``.

Samples ``MemTotal - MemAvailable`` (memory in use, reclaimable page cache not counted: the
measure issue #19 sets its 8 GB target in) and swap in use every ``--interval`` seconds while
CMD runs, and reports the idle level just before, the peak, the peak above idle, the summed peak
resident set of CMD's process tree and the wall time. Other load on the machine counts too: run
it on a quiet machine.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path


def meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes."""
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        k, v = line.split(":", 1)
        out[k] = int(v.split()[0]) * 1024
    return out


def in_use() -> tuple[int, int]:
    """(memory in use, swap in use) in bytes."""
    m = meminfo()
    return m["MemTotal"] - m["MemAvailable"], m.get("SwapTotal", 0) - m.get("SwapFree", 0)


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and its descendants (workers included)."""
    pids, total = [pid], 0
    while pids:
        p = pids.pop()
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            for t in Path(f"/proc/{p}/task").iterdir():
                pids += [int(c) for c in (t / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return total


def private_bytes(pid: int | str = "self") -> int:
    """Resident memory of one process that is its own (``statm`` resident minus shared): tensors
    and heap, not the file pages of a memory-mapped feature store, which the page cache shares."""
    f = Path(f"/proc/{pid}/statm").read_text().split()
    return (int(f[1]) - int(f[2])) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak private memory of this process while the block runs, sampled every ``interval``
    seconds in a thread (a job's footprint in ``timings``; the peak between samples can be missed
    by at most one interval's allocations). On CUDA also the device's peak allocation."""

    def __init__(self, interval: float = 0.1, device=None):
        self.interval, self.device = interval, device
        self.start = self.peak = 0
        self.cuda_peak: int | None = None
        self._stop = threading.Event()

    def __enter__(self) -> "PeakMemory":
        try:
            self.start = self.peak = private_bytes()
        except OSError:  # no /proc (not Linux): nothing sampled
            return self
        if self.device is not None and getattr(self.device, "type", None) == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)

        def sample():
            while not self._stop.wait(self.interval):
                self.peak = max(self.peak, private_bytes())

        self._thread = threading.Thread(target=sample, daemon=True, name="peak-memory")
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if hasattr(self, "_thread"):
            self._thread.join()
            self.peak = max(self.peak, private_bytes())
        if self.device is not None and getattr(self.device, "type", None) == "cuda":
            import torch

            self.cuda_peak = int(torch.cuda.max_memory_allocated(self.device))

    def report(self) -> dict[str, float]:
        gb = 2**30
        out = {"mem_start_gb": round(self.start / gb, 3), "mem_peak_gb": round(self.peak / gb, 3)}
        if self.cuda_peak is not None:
            out["cuda_peak_gb"] = round(self.cuda_peak / gb, 3)
        return out


def probe(cmd: list[str], interval: float = 0.5) -> dict[str, float]:
    idle = in_use()[0]
    for _ in range(2):  # the lowest of three readings 0.2 s apart
        time.sleep(0.2)
        idle = min(idle, in_use()[0])
    peak, peak_swap, peak_rss = idle, 0, 0
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    stop = threading.Event()

    def sample():
        nonlocal peak, peak_swap, peak_rss
        while not stop.is_set():
            used, swap = in_use()
            peak, peak_swap = max(peak, used), max(peak_swap, swap)
            peak_rss = max(peak_rss, tree_rss(proc.pid))
            stop.wait(interval)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    rc = proc.wait()
    stop.set()
    th.join()
    gb = 2**30
    return {"rc": rc, "wall_s": round(time.perf_counter() - t0, 1), "idle_gb": round(idle / gb, 2),
            "peak_gb": round(peak / gb, 2), "peak_above_idle_gb": round((peak - idle) / gb, 2),
            "peak_tree_rss_gb": round(peak_rss / gb, 2), "peak_swap_gb": round(peak_swap / gb, 2),
            "command": " ".join(cmd)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.memprobe", description=__doc__.split("\n")[0])
    p.add_argument("--out", default=None, help="also write the report as JSON here")
    p.add_argument("--interval", type=float, default=0.5)
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- the command to measure")
    a = p.parse_args(argv)
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    if not cmd:
        p.error("no command given (put it after --)")
    rep = probe(cmd, a.interval)
    print(json.dumps(rep), file=sys.stderr)
    if a.out:
        Path(a.out).write_text(json.dumps(rep, indent=1))
    return int(rep["rc"])


if __name__ == "__main__":
    sys.exit(main())
