"""Shared base types of every layer: `Frozen`, the immutable pydantic model that settings are made of."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Frozen(BaseModel):
    # No NaN or infinity: every comparison with a limit would pass or fail by accident.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
