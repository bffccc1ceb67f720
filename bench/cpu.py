"""Whose CPU time is it: this benchmark's process tree, or something else on the machine.

Benchmarks on a shared machine measure the neighbours as much as themselves. ``CpuMeter``
reads the machine's busy time from /proc/stat and this process tree's (the bench, its
servers, their workers) from each process, so a window in which other programs used the
CPU can be recognised and the figures refused.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import psutil

_HZ = os.sysconf("SC_CLK_TCK")


def _machine_busy_seconds() -> float:
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / _HZ


def _tree_seconds() -> float:
    me = psutil.Process(os.getpid())
    total = 0.0
    for proc in [me, *me.children(recursive=True)]:
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


@dataclass(frozen=True)
class CpuUse:
    """Average cores busy over a window: on the whole machine, by us, by anything else."""

    seconds: float
    machine: float
    ours: float
    cores: int

    @property
    def foreign(self) -> float:
        return max(0.0, self.machine - self.ours)

    @property
    def busy_fraction(self) -> float:
        return self.machine / self.cores

    def as_dict(self) -> dict[str, float]:
        return {"seconds": round(self.seconds, 2), "machine_cores": round(self.machine, 3),
                "ours_cores": round(self.ours, 3), "foreign_cores": round(self.foreign, 3),
                "busy_fraction": round(self.busy_fraction, 3)}


class CpuMeter:
    """``start()`` then ``stop()`` around a window."""

    def __init__(self) -> None:
        self._t = self._machine = self._ours = 0.0

    def start(self) -> None:
        self._t, self._machine, self._ours = (time.monotonic(), _machine_busy_seconds(),
                                              _tree_seconds())

    def stop(self) -> CpuUse:
        seconds = time.monotonic() - self._t
        machine = (_machine_busy_seconds() - self._machine) / seconds
        ours = (_tree_seconds() - self._ours) / seconds
        return CpuUse(seconds, machine, min(ours, machine), psutil.cpu_count() or 1)


def idle_foreign_load(seconds: float = 3.0) -> CpuUse:
    """What the machine does while we do nothing."""
    meter = CpuMeter()
    meter.start()
    time.sleep(seconds)
    return meter.stop()
