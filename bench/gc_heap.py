"""What the garbage collector settings of a Likeness process (likeness.heap) save: the CPU of importing what a flow
run that loads models imports, the part of it the collector took, and one full collection afterwards (what
`likeness.models.pipelines.release` makes to return a model's memory), with CPython's defaults and with ours.

    .venv/bin/python bench/gc_heap.py          # medians of 5 fresh processes per setting

Each measurement is a fresh Python process; the figures are CPU seconds, so a busy machine moves them less than
wall time, but run it alone.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

RUNS = 5
# In a fresh process: optionally our settings, then the imports of a flow run that loads a model, then one full
# collection (after a freeze, with ours). Prints CPU seconds as JSON.
PROBE = """
import gc, json, time
spent = [0.0]
started = []
gc.callbacks.append(lambda phase, info: started.append(time.process_time()) if phase == "start"
                    else spent.__setitem__(0, spent[0] + time.process_time() - started.pop()))
ours = {ours}
if ours:
    from likeness.heap import collect_less_often, freeze_what_lives_now
    collect_less_often()
begin = time.process_time()
import flows.produce, diffusers.models, transformers.modeling_utils, peft
imported = time.process_time() - begin
collected_while_importing = spent[0]
if ours:
    freeze_what_lives_now()
begin = time.process_time()
gc.collect()
print(json.dumps({{"import": imported, "gc_in_import": collected_while_importing,
                  "full_collection": time.process_time() - begin}}))
"""


def probe(ours: bool) -> dict[str, float]:
    """Medians over RUNS fresh processes."""
    runs = []
    for _ in range(RUNS):
        command = [sys.executable, "-c", PROBE.format(ours=ours)]
        said = subprocess.run(command, capture_output=True, text=True, check=True)
        runs.append(json.loads(said.stdout.strip().splitlines()[-1]))
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def main() -> None:
    default, ours = probe(False), probe(True)
    print(f"{'CPU seconds (median of ' + str(RUNS) + ')':<44}{'CPython defaults':>18}{'likeness.heap':>16}{'ratio':>8}")
    for key, label in (
        ("import", "importing flows, diffusers, transformers, peft"),
        ("gc_in_import", "  of which the garbage collector"),
        ("full_collection", "one full collection afterwards (release)"),
    ):
        print(f"{label:<44}{default[key]:>18.3f}{ours[key]:>16.3f}{ours[key] / default[key]:>8.2f}")


if __name__ == "__main__":
    main()
