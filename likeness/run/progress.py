"""Progress of long work, shown as a bar on the CLI and as a progress artifact in the Prefect UI."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from typing import Any
from uuid import UUID

Listener = Callable[[str, int, int, str], None]
_listeners: list[Listener] = []
_announcers: list[Callable[[str], None]] = []
log = logging.getLogger(__name__)


def add_listener(listener: Listener) -> None:
    """Call `listener(stage, done, total, detail)` on every progress update in this process."""
    _listeners.append(listener)


def remove_listener(listener: Listener) -> None:
    _listeners.remove(listener)


def add_announcer(announcer: Callable[[str], None]) -> None:
    """Call `announcer(line)` with every line `announce` is given in this process."""
    _announcers.append(announcer)


def remove_announcer(announcer: Callable[[str], None]) -> None:
    _announcers.remove(announcer)


def announce(line: str) -> None:
    """A line for the person watching, as it happens (a batch's row started or ended): in the log, and on the
    console of a CLI that runs the flow."""
    log.info(line)
    for announcer in list(_announcers):
        announcer(line)


class StageProgress:
    """Counts the steps of one stage and reports each to the listeners and the Prefect run."""

    def __init__(self, stage: str, total: int, artifact_key: str | None = None) -> None:
        self.stage, self.total, self.done = stage, total, 0
        self._artifact: UUID | None = None
        self._artifact_key = prefect_artifact_key(artifact_key or stage)
        self._notify("")

    def advance(self, detail: str = "", steps: int = 1) -> None:
        self.done = min(self.total, self.done + steps)
        self._notify(detail)

    def wait(self, futures: Iterable[Any], detail: str) -> None:
        """Advance once per finished future, in order; a failed one raises its error here."""
        for future in futures:
            future.result()
            self.advance(detail)

    def _notify(self, detail: str) -> None:
        for listener in list(_listeners):
            listener(self.stage, self.done, self.total, detail)
        self._update_artifact(detail)

    def _update_artifact(self, detail: str) -> None:
        from prefect.artifacts import create_progress_artifact, update_progress_artifact
        from prefect.context import FlowRunContext, TaskRunContext

        if FlowRunContext.get() is None and TaskRunContext.get() is None:
            return
        percent = 100.0 * self.done / max(self.total, 1)
        description = f"{self.stage}: {self.done}/{self.total} {detail}".strip()
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
