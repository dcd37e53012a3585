"""The garbage collector of a Likeness process: fewer young collections, the libraries frozen before a model loads."""

from __future__ import annotations

import gc
import subprocess
import sys
import types
import weakref

from likeness.heap import YOUNG_GENERATION_ALLOCATIONS, collect_less_often
from likeness.models import pipelines
from likeness.models.profiles import load_profile

TINY = load_profile("tiny")


def test_collecting_less_often_changes_only_the_young_generations_threshold():
    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 7, 3)
        collect_less_often()
        assert gc.get_threshold() == (YOUNG_GENERATION_ALLOCATIONS, 7, 3)
    finally:
        gc.set_threshold(*before)


def test_a_flow_run_process_collects_less_often_from_its_first_import_of_ours():
    said = subprocess.run(
        [sys.executable, "-c", "import gc, flows; print(gc.get_threshold()[0])"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert said.stdout.strip() == str(YOUNG_GENERATION_ALLOCATIONS)


def test_the_first_load_freezes_the_libraries_and_a_released_model_is_still_freed(likeness_env):
    pipelines.clear()
    editor = pipelines.get_pipeline("editor", TINY)
    # torch, diffusers, transformers and peft: hundreds of thousands of objects no full collection walks again.
    assert gc.get_freeze_count() > 100_000
    # A reference cycle through the model: only a collection returns its memory, and it would never collect a model
    # frozen with the libraries.
    holder = types.SimpleNamespace(model=editor)
    editor.__dict__["_held_by"] = holder
    loaded = weakref.ref(editor)
    del editor, holder
    pipelines.release("editor")
    assert loaded() is None
