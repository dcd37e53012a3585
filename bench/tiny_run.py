"""Wall time of a first tiny run, of the cached re-run and of a render-only change, and model loads.

    .venv/bin/python bench/tiny_run.py

Each run is `likeness produce` as a user types it, in a fresh folder: once with Prefect's temporary
local server (the default when PREFECT_API_URL is unset, which costs a few seconds to start on
every run), once against a running `prefect server start`. The first run includes building the
tiny models. Figures vary with machine load: compare the ratios.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.prefect_server import prefect_server  # noqa: E402

LIKENESS = str(Path(sys.executable).parent / "likeness")


def produce(cwd: Path, env: dict[str, str], *extra: str) -> tuple[float, dict]:
    started = time.perf_counter()
    subprocess.run(
        [LIKENESS, "produce", "Grace Hopper", "--image", "grace.jpg", "--profile", "tiny", "--out", "out", *extra],
        cwd=cwd,
        env=env,
        check=True,
        capture_output=True,
    )
    wall = time.perf_counter() - started
    return wall, json.loads((cwd / "out" / "likeness.json").read_text())["last_run"]


def produce_cached(cwd: Path, env: dict[str, str]) -> tuple[float, dict]:
    """A re-run that takes the cached path: with nothing changed it would only say "up to date" (bench/rerun.py)."""
    (cwd / "out" / "dataset_contact_sheet.png").unlink()
    return produce(cwd, env)


def measure(api: str | None) -> list[tuple[str, float, dict]]:
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        shutil.copyfile(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg", cwd / "grace.jpg")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LIKENESS_", "PREFECT_"))}
        env.update(PREFECT_HOME=str(cwd / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
        if api:
            env["PREFECT_API_URL"] = api
        return [
            ("first run", *produce(cwd, env)),
            ("cached re-run", *produce_cached(cwd, env)),
            ("render.seed changed", *produce(cwd, env, "--set", "render.seed=1")),
        ]


def report(title: str, runs: list[tuple[str, float, dict]]) -> None:
    first = runs[0][1]
    print(f"\n{title}")
    print(f"{'run':<22}{'wall s':>8}{'in-flow s':>11}{'x first':>9}  model loads")
    for name, wall, last_run in runs:
        loads = ", ".join(f"{role} x{n}" for role, n in last_run["model_loads"].items()) or "none"
        print(f"{name:<22}{wall:>8.1f}{last_run['seconds']:>11.1f}{wall / first:>9.2f}  {loads}")


def main() -> None:
    report("Prefect temporary server (no PREFECT_API_URL)", measure(None))
    with tempfile.TemporaryDirectory() as home, prefect_server(Path(home)) as api:
        report("running Prefect server", measure(api))


if __name__ == "__main__":
    main()
