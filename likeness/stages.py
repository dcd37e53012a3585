"""The Prefect task a stage is: retried unless its failure is permanent, its result persisted as
JSON, cached by the content of its inputs (`likeness.storage.caching`), tagged for the GPU limit."""

from __future__ import annotations

from typing import Any

from prefect import task

from likeness.run.errors import retry_transient
from likeness.storage.caching import stage_cache


def stage_task(name: str, version: int, *, retries: int = 2, retry_delay_seconds: float = 10, gpu: bool = True) -> Any:
    """Decorator: the function as the Prefect task of stage `name` at `version`."""
    return task(
        name=name,
        retries=retries,
        retry_condition_fn=retry_transient,
        retry_delay_seconds=retry_delay_seconds,
        cache_policy=stage_cache(version),
        persist_result=True,
        result_serializer="json",
        tags=["gpu"] if gpu else [],
    )
