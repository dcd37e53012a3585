"""What a failed run tells the person who started it, and which failures are worth a retry."""

from __future__ import annotations

import errno
from typing import Any

from likeness.inputs import InvalidInput
from likeness.run.interrupts import StageStopped
from likeness.storage.store import CorruptObject, MissingObject

# The machine, not the moment: retrying a task after these only repeats the failure more slowly.
PERMANENT_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EDQUOT})


def is_permanent(exc: BaseException) -> bool:
    """True for failures a retry of the same stage cannot fix: a full or read-only disk, bad input, a lost
    input, an interrupted run."""
    if isinstance(exc, OSError) and exc.errno in PERMANENT_ERRNOS:
        return True
    # A corrupt or missing input artifact is remade by the stage that made it, not by this one.
    return isinstance(exc, InvalidInput | MissingObject | CorruptObject | StageStopped)


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect `retry_condition_fn`: retry a failed stage unless its failure is permanent."""
    exc = state.data
    return not (isinstance(exc, BaseException) and is_permanent(exc))


def describe_failure(exc: BaseException) -> str:
    """One line naming what went wrong; for a filesystem error, the path and the cause."""
    if isinstance(exc, OSError) and exc.strerror:
        path = f"{exc.filename}: " if exc.filename else ""
        return f"{path}{exc.strerror} ({errno.errorcode.get(exc.errno or 0, exc.errno)})"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
