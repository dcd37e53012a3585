"""Cache keys for stages: content hashes of the inputs, the stage's parameters, its version, the profile.

Inputs are small typed references (an `ArtifactRef` carries the sha256 of its bytes), so the key
is a hash of JSON, never of pickled tensors or pipelines. Bump a stage's version when its code
changes what it produces. The key also names the artifact store: a cached reference is only
good where its bytes are.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from prefect.cache_policies import CacheKeyFnPolicy, CachePolicy
from prefect.context import TaskRunContext
from pydantic_core import to_jsonable_python

from likeness.artifacts import get_store
from likeness.config import ModelProfile


def _profile_identity(profile: ModelProfile) -> dict[str, Any]:
    """What of a profile changes outputs: its models and precision (not its description or device)."""
    return {"models": profile.model_dump(mode="json")["models"], "dtype": profile.dtype}


def stage_key(stage: str, version: int, inputs: dict[str, Any]) -> str:
    """A sha256 over the stage's name, version and JSON-encoded inputs."""
    encoded = {
        name: _profile_identity(value) if isinstance(value, ModelProfile) else to_jsonable_python(value)
        for name, value in inputs.items()
    }
    payload = json.dumps({"stage": stage, "version": version, "inputs": encoded}, sort_keys=True)
    return f"{stage}-v{version}-{hashlib.sha256(payload.encode()).hexdigest()}"


def stage_cache(version: int) -> CachePolicy:
    """The cache policy of a stage task at `version`."""

    def key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
        return stage_key(context.task.name, version, {**parameters, "_store": get_store().uri})

    return CacheKeyFnPolicy(cache_key_fn=key)
