"""The stop flag: set once a run is asked to stop, read between the steps of model work.

Model work that a stage runs in a worker thread cannot receive a signal, so it polls `check_stop`
between steps (`stop_between_steps` for diffusers pipelines) and ends with `StageStopped`. The flag
lives at the base layer so any layer's loops can poll it; `likeness.run.interrupts` sets it when a
signal arrives and clears it when the run's interruptible block ends.
"""

from __future__ import annotations

import threading
from typing import Any

_stopping = threading.Event()


class StageStopped(RuntimeError):
    """A stage ended between two steps because the run was interrupted."""


def request_stop() -> None:
    """Raise the flag: every `check_stop` from now on ends its stage."""
    _stopping.set()


def clear_stop() -> None:
    """Lower the flag, once the interrupted run has unwound."""
    _stopping.clear()


def check_stop() -> None:
    """Raise StageStopped once the run is interrupted; model loops in worker threads call it each step."""
    if _stopping.is_set():
        raise StageStopped("the run was interrupted")


def stop_between_steps(pipe: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
    """A diffusers `callback_on_step_end` that ends an interrupted run's denoising loop at the next step."""
    check_stop()
    return callback_kwargs
