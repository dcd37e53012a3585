"""What the garbage collector settings of a Likeness process (likeness.heap) save, in a fresh process that does what a
`likeness produce` does with its models: import the CLI and the flows, then load each tiny model the stages use
and release it when its stage is done. Prints the CPU of the whole, the collector's part of it, and of
`likeness.models.pipelines.release` (its full collection returns a model's memory), with CPython's defaults (nothing
frozen) and with ours.

    .venv/bin/python bench/gc_heap.py          # medians of 5 fresh processes per setting

The tiny models are built first, once, in a temporary folder. The figures are CPU seconds, so a busy machine moves
them less than wall time, but run it alone.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile

RUNS = 5
ROLES = ("editor", "upscaler", "refiner", "captioner", "video")
PROBE = """
import gc, json, time
spent, started = [0.0], []
gc.callbacks.append(lambda phase, info: started.append(time.process_time()) if phase == "start"
                    else spent.__setitem__(0, spent[0] + time.process_time() - started.pop()))
ours = {ours}
if ours:
    from likeness.heap import collect_less_often
    collect_less_often()
begin = time.process_time()
import likeness.cli.app, flows.produce
from likeness.models import pipelines
from likeness.models.profiles import load_profile
if not ours:
    pipelines._frozen = True  # nothing frozen, as with CPython's defaults
profile = load_profile("tiny")
releasing = 0.0
for role in {roles}:
    pipelines.get_pipeline(role, profile)
    release_began = time.process_time()
    pipelines.release(role)
    releasing += time.process_time() - release_began
print(json.dumps({{"total": time.process_time() - begin, "collector": spent[0], "release": releasing}}))
"""


def probe(ours: bool, env: dict[str, str]) -> dict[str, float]:
    """Medians over RUNS fresh processes."""
    runs = []
    for _ in range(RUNS):
        command = [sys.executable, "-c", PROBE.format(ours=ours, roles=ROLES)]
        said = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
        runs.append(json.loads(said.stdout.strip().splitlines()[-1]))
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def main() -> None:
    with tempfile.TemporaryDirectory() as data:
        env = {**os.environ, "LIKENESS_DATA_DIR": data, "LIKENESS_MODELS_DIR": f"{data}/models"}
        env["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
        build = f"from likeness.models.tiny import build_tiny_models; build_tiny_models('{data}/models/tiny')"
        subprocess.run([sys.executable, "-c", build], check=True, env=env, capture_output=True)
        default, ours = probe(False, env), probe(True, env)
    print(f"CPU seconds, median of {RUNS} processes      CPython defaults   likeness.heap   ratio")
    for key, label in (
        ("total", f"import, then load and release {len(ROLES)} models"),
        ("collector", "  of which the garbage collector"),
        ("release", f"  of which the {len(ROLES)} releases"),
    ):
        print(f"{label:<44}{default[key]:>17.2f}{ours[key]:>16.2f}{ours[key] / default[key]:>8.2f}")


if __name__ == "__main__":
    main()
