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


def test_a_flow_run_process_collects_less_often_and_imports_torch_only_when_a_task_needs_it():
    # A produce or batch run on a CPU worker only dispatches its stages; a cached CLI run loads no model.
    imports = "import gc, sys, flows.produce, flows.batch, flows.maintenance"
    said = subprocess.run(
        [sys.executable, "-c", f"{imports}; print(gc.get_threshold()[0], 'torch' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert said.stdout.split() == [str(YOUNG_GENERATION_ALLOCATIONS), "False"]


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


def test_style_encoders_loaded_before_any_pipeline_are_not_frozen_with_the_libraries(likeness_env, monkeypatch):
    # As in a fresh process whose first model is the refiner's USO encoders.
    pipelines.clear()
    gc.unfreeze()
    monkeypatch.setattr(pipelines, "_frozen", False)
    encoders = pipelines.get_uso_encoders(TINY)
    assert gc.get_freeze_count() > 100_000
    encoder = encoders.encoder
    encoder.__dict__["_held_by"] = types.SimpleNamespace(model=encoder)
    loaded = weakref.ref(encoder)
    del encoders, encoder
    pipelines.release("refiner")
    assert loaded() is None
