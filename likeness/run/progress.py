"""Progress of long work, shown as a bar on the CLI and as a progress artifact in the Prefect UI."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from typing import Any
from uuid import UUID

Listener = Callable[[str, int, int, str], None]
_listeners: list[Listener] = []
_announcers: list[Callable[[str], None]] = []
log = logging.getLogger(__name__)


def add_listener(listener: Listener) -> None:
    """Call `listener(stage, done, total, text)` on every progress update in this process: `done` of `total` steps
    for a bar, `text` where the stage is as people count it ("upscale 3/7 shots", "120/600 steps loss 0.0812")."""
    _listeners.append(listener)


def remove_listener(listener: Listener) -> None:
    _listeners.remove(listener)


def add_announcer(announcer: Callable[[str], None]) -> None:
    """Call `announcer(line)` with every line `announce` is given in this process."""
    _announcers.append(announcer)


def remove_announcer(announcer: Callable[[str], None]) -> None:
    _announcers.remove(announcer)


def announce(line: str) -> None:
    """A line for the person watching, as it happens (a batch's row started or ended, a phrase every caption
    shares): in the log (the run's, in the Prefect UI, within a flow or task run), and on the console of a CLI that
    runs the flow."""
    from prefect.context import FlowRunContext, TaskRunContext
    from prefect.logging import get_run_logger

    in_run = FlowRunContext.get() is not None or TaskRunContext.get() is not None
    (get_run_logger() if in_run else log).info(line)
    for announcer in list(_announcers):
        announcer(line)


class StageProgress:
    """Counts the steps of one stage and reports each to the listeners and the Prefect run, in what people count
    (`unit`: "steps", "renders"), or, for a stage whose steps are several phases over its items (a dataset's shots
    edited, upscaled, masked and captioned), in items through the phase at work."""

    def __init__(
        self, stage: str, total: int, artifact_key: str | None = None, unit: str = "", items: int | None = None
    ) -> None:
        """`total` steps; `items`: how many `unit` they are about, where not one a step (a dataset's shots)."""
        self.stage, self.total, self.done, self.unit = stage, total, 0, unit
        self._artifact: UUID | None = None
        self._artifact_key = prefect_artifact_key(artifact_key or stage)
        self._notify(self._count(0, total if items is None else items))

    def advance(self, detail: str = "", steps: int = 1) -> None:
        self.done = min(self.total, self.done + steps)
        self._notify(f"{self._count(self.done, self.total)} {detail}".strip())

    def wait(self, futures: Sequence[Any], phase: str) -> None:
        """Advance once per finished future, in order, counting them as the items of `phase` ("upscale 3/7
        shots"); a failed one raises its error here."""
        for index, future in enumerate(futures, start=1):
            future.result()
            self.done = min(self.total, self.done + 1)
            self._notify(f"{phase} {self._count(index, len(futures))}")

    def _count(self, done: int, total: int) -> str:
        return f"{done}/{total} {self.unit}".strip()

    def _notify(self, text: str) -> None:
        for listener in list(_listeners):
            listener(self.stage, self.done, self.total, text)
        self._update_artifact(text)

    def _update_artifact(self, detail: str) -> None:
        from prefect.artifacts import create_progress_artifact, update_progress_artifact
        from prefect.context import FlowRunContext, TaskRunContext

        if FlowRunContext.get() is None and TaskRunContext.get() is None:
            return
        percent = 100.0 * self.done / max(self.total, 1)
        description = f"{self.stage}: {detail}"
        try:
            if self._artifact is None:
                self._artifact = create_progress_artifact(percent, key=self._artifact_key, description=description)
            else:
                update_progress_artifact(self._artifact, percent, description=description)
        except Exception as exc:  # progress is for people: never fail the stage over it
            log.warning("could not update the progress artifact for %s: %s", self.stage, exc)


def prefect_artifact_key(text: str) -> str:
    """Prefect artifact keys allow only lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-") or "progress"
