"""Where the test suite's time goes: its wall time, and the CPU every process on the machine spent while it ran,
summed by kind (the `likeness` CLIs, flow runs on Prefect workers, Prefect servers, the pytest workers, ...).

    .venv/bin/python bench/suite_cpu.py                      # the whole suite, as `bin/test -q` runs it
    .venv/bin/python bench/suite_cpu.py -m "not slow" -n 2   # any pytest arguments instead

Every process's CPU time is read from /proc twice a second and its last reading kept, so a process that lives less
than half a second is missed. Run it on an otherwise idle machine: whatever else runs is counted too, under "other".
The suite is CPU-bound when the CPU total is close to the cores times the wall time.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_S = 0.5
# First match wins: (kind, a fragment of the command line).
KINDS = (
    ("chromium", "chrom"),
    ("S3 server (weed)", "weed"),
    ("Prefect server", "prefect server start"),
    ("temporary Prefect server of a CLI", "likeness.run.prefect_server"),
    ("Prefect worker", "prefect worker"),
    ("flow run on a worker", "prefect.engine"),
    ("pytest worker", "exec(eval(sys.stdin"),
    ("likeness CLI", "bin/likeness"),
    ("likeness CLI", "-m likeness.cli"),
    ("PostgreSQL", "postgres"),
    ("ffmpeg", "ffmpeg"),
    ("pytest", "pytest"),
    ("other Python", "python"),
)


def kind_of(command: str) -> str:
    return next((kind for kind, fragment in KINDS if fragment in command), "other")


def read_processes() -> dict[tuple[str, str], tuple[str, float]]:
    """(pid, start time) -> (command line, CPU seconds so far), for every process that can be read."""
    ticks = os.sysconf("SC_CLK_TCK")
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if command:
            found[(entry.name, fields[19])] = (command, (int(fields[11]) + int(fields[12])) / ticks)
    return found


def main() -> None:
    pytest_args = sys.argv[1:] or ["-q"]
    seen: dict[tuple[str, str], tuple[str, float]] = {}
    before = read_processes()
    done = threading.Event()

    def sample() -> None:
        while not done.wait(SAMPLE_S):
            seen.update(read_processes())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    result = subprocess.run([str(ROOT / "bin" / "test"), *pytest_args], cwd=ROOT, check=False)
    wall = time.monotonic() - started
    done.set()
    sampler.join()
    seen.update(read_processes())

    own_pid = str(os.getpid())
    by_kind: dict[str, list[float]] = {}
    for key, (command, cpu) in seen.items():
        if key[0] == own_pid:
            continue
        spent = cpu - before[key][1] if key in before else cpu
        if spent > 0:
            totals = by_kind.setdefault(kind_of(command), [0.0, 0])
            totals[0] += spent
            totals[1] += 1
    total = sum(cpu for cpu, _ in by_kind.values())
    cores = os.cpu_count() or 1
    print(f"\npytest exited {result.returncode}; wall {wall:.0f} s; CPU {total:.0f} s on {cores} cores "
          f"({total / (cores * wall):.0%} of what they could do)")  # fmt: skip
    print(f"{'kind of process':<36} {'processes':>9} {'CPU s':>8}")
    for kind, (cpu, count) in sorted(by_kind.items(), key=lambda item: -item[1][0]):
        print(f"{kind:<36} {count:>9} {cpu:>8.0f}")


if __name__ == "__main__":
    main()
