"""This process's memory as Linux reports it (/proc/self/status), for the benchmarks' memory figures."""

from __future__ import annotations


def status_kb(field: str) -> int:
    """A kB field of /proc/self/status: "VmRSS" (resident now) or "VmHWM" (the resident high-water mark)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")
