"""Readers of ``/proc/PID`` for the benchmarks: CPU time of all threads, RSS and open fds.

CPU is ``utime + stime`` of the whole process (every thread: the SDKs' Rust and libwebrtc workers
included) from ``/proc/PID/stat``, so 100 % means one full core.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
_TICK = os.sysconf("SC_CLK_TCK")


def parse_stat_cpu_s(stat_line: str) -> float:
    """User + system CPU seconds from one ``/proc/PID/stat`` line.

    The command name (field 2) may contain spaces and parentheses, so fields are counted after
    the *last* ``)``: utime and stime are fields 14 and 15 of the line, 12 and 13 after it.
    """
    rest = stat_line.rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / _TICK


def parse_status_kb(status_text: str, key: str) -> int | None:
    """A ``kB`` field of ``/proc/PID/status`` (e.g. ``VmRSS``), or None when absent."""
    for line in status_text.splitlines():
        name, _, value = line.partition(":")
        if name == key:
            parts = value.split()
            return int(parts[0]) if parts else None
    return None


def cpu_seconds(pid: int | str = "self", proc: Path = PROC) -> float:
    return parse_stat_cpu_s((proc / str(pid) / "stat").read_text())


def rss_mb(pid: int | str = "self", proc: Path = PROC) -> float:
    kb = parse_status_kb((proc / str(pid) / "status").read_text(), "VmRSS")
    return round((kb or 0) / 1024, 1)


def open_fds(pid: int | str = "self", proc: Path = PROC) -> int:
    return len(os.listdir(proc / str(pid) / "fd"))


def children_cpu_seconds(proc: Path = PROC) -> float:
    """CPU of this process's reaped children (``cutime + cstime``), for completeness only."""
    rest = (proc / "self" / "stat").read_text().rsplit(")", 1)[1].split()
    return (int(rest[13]) + int(rest[14])) / _TICK


@dataclass
class CpuWindow:
    """CPU % of one core of a set of processes over a wall-clock window.

    ``start()`` then ``stop()``; a process that has exited by ``stop()`` raises, which is what a
    benchmark wants (a crashed daemon must not read as 0 % CPU).
    """

    pids: dict[str, int | str]
    proc: Path = PROC

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._c0 = {k: cpu_seconds(p, self.proc) for k, p in self.pids.items()}

    def stop(self) -> dict[str, float]:
        wall = time.monotonic() - self._t0
        out = {
            k: 100 * (cpu_seconds(p, self.proc) - self._c0[k]) / wall for k, p in self.pids.items()
        }
        rounded = {k: round(v, 1) for k, v in out.items()}
        rounded["wall_s"] = round(wall, 3)
        return rounded
