"""Cache keys for stages: content hashes of the inputs, the stage's parameters, its version, the profile.

Inputs are small typed references (an `ArtifactRef` carries the sha256 of its bytes), so the key
is a hash of JSON, never of pickled tensors or pipelines. Bump a stage's version when its code
changes what it produces. The key also names the artifact store: a cached reference is only
good where its bytes are, so a cached result is used only while the store still holds every
artifact it refers to.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext
from prefect.results import ResultStore
from prefect.settings import PREFECT_TASKS_REFRESH_CACHE
from pydantic import ValidationError
from pydantic_core import to_jsonable_python

from likeness.config import ModelProfile
from likeness.storage.artifacts import ArtifactRef, get_store
from likeness.storage.store import ArtifactStore, MissingObject

logger = logging.getLogger(__name__)

REF_FIELDS = frozenset(ArtifactRef.model_fields)


def stage_key(stage: str, version: int, inputs: dict[str, Any]) -> str:
    """A sha256 over the stage's name, version and JSON-encoded inputs."""
    encoded = {
        name: value.output_identity() if isinstance(value, ModelProfile) else to_jsonable_python(value)
        for name, value in inputs.items()
    }
    payload = json.dumps({"stage": stage, "version": version, "inputs": encoded}, sort_keys=True)
    return f"{stage}-v{version}-{hashlib.sha256(payload.encode()).hexdigest()}"


def artifact_refs(value: Any) -> list[ArtifactRef]:
    """Each distinct ArtifactRef inside `value`, in order: any mapping in its JSON form with key, sha256 and size."""
    found: dict[ArtifactRef, None] = {}
    # What JSON cannot show holds no reference we could check.
    pending = [to_jsonable_python(value, fallback=lambda _: None)]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            if REF_FIELDS <= node.keys():
                try:
                    found.setdefault(ArtifactRef.model_validate({name: node[name] for name in REF_FIELDS}), None)
                except ValidationError:
                    pass  # the right names with the wrong types: not a reference
            pending.extend(reversed(node.values()))
        elif isinstance(node, list):
            pending.extend(reversed(node))
    return list(found)


def stale_artifact(refs: list[ArtifactRef], store: ArtifactStore) -> str | None:
    """What is wrong with the first reference the store no longer backs, or None; one `info()` per reference."""
    for ref in refs:
        try:
            found = store.info(ref.key).sha256
        except MissingObject:
            return f"object {ref.key!r} is missing from {store.uri}"
        if found != ref.sha256:
            return f"object {ref.key!r} in {store.uri} hashes to {found[:12]}..., not {ref.sha256[:12]}..."
    return None


@dataclass(kw_only=True)
class StageCachePolicy(CachePolicy):
    """Keys a stage run by `stage_key`, and retires a cached result whose artifacts the store no longer holds.

    Prefect asks the policy for the key just before it looks the key up in the task's result store, so a
    stale record found here is rewritten as expired: Prefect's `exists()` then misses, the stage runs
    again and its commit overwrites the record with a fresh one.
    """

    version: int

    def compute_key(
        self, task_ctx: TaskRunContext, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> str:
        store = get_store()
        key = stage_key(task_ctx.task.name, self.version, {**inputs, "_store": store.uri})
        refresh = task_ctx.task.refresh_cache
        if not (refresh if refresh is not None else PREFECT_TASKS_REFRESH_CACHE.value()):
            _retire_if_stale(task_ctx.result_store, key, task_ctx.task.name, store)
        return key


def _retire_if_stale(results: ResultStore, key: str, stage: str, store: ArtifactStore) -> None:
    try:
        record = results.read(key)
    except Exception:
        return  # no record, or one Prefect cannot read either: its own exists() treats both as a miss
    now = datetime.now(UTC)
    if record.metadata.expiration is not None and record.metadata.expiration <= now:
        return
    problem = stale_artifact(artifact_refs(record.result), store)
    if problem is None:
        return
    logger.warning("stage %r: not using its cached result, %s; running the stage again", stage, problem)
    results.write(record.result, key=key, expiration=now)


def stage_cache(version: int) -> CachePolicy:
    """The cache policy of a stage task at `version`."""
    return StageCachePolicy(version=version)
