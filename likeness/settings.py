"""Process-wide settings: one object, read from `LIKENESS_*` environment variables and `.env`."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Where data lives, which models to use, and the secrets to reach remote services."""

    model_config = SettingsConfigDict(env_prefix="LIKENESS_", env_file=".env", extra="ignore")

    data_dir: Path = Path("likeness-data")
    store_uri: str | None = None
    s3_endpoint: str | None = None
    s3_access_key: SecretStr | None = None
    s3_secret_key: SecretStr | None = None
    models_dir: Path | None = None
    profile: str = "tiny"
    device: str | None = None
    download_models: bool = False
    hf_token: SecretStr | None = None
    runpod_api_key: SecretStr | None = None
    # An OpenAI-compatible chat endpoint (`.../v1`) that writes prompt variations; unset: the seeded templates.
    prompter_url: str | None = None
    prompter_model: str = "qwen3-8b-instruct"
    prompter_api_key: SecretStr | None = None
    prompter_timeout_s: float = 60.0
    # The GPU type a GPU run's cost is estimated for at its start (likeness.estimate.gpus.GPUS).
    estimate_gpu: str = "H100"
    # The work pools `prefect.yaml` deploys to (deployments/pools.py creates them).
    work_pools: tuple[str, ...] = ("likeness-cpu", "likeness-gpu")
    # Or a transformers chat LM run in this process: a local folder, a hub repo id, or `tiny:prompter`.
    prompter_local: str | None = None

    @property
    def resolved_models_dir(self) -> Path:
        return (self.models_dir or self.data_dir / "models").resolve()

    @property
    def estimate_counts_file(self) -> Path:
        """Where the cost estimate keeps its meta-device counts between processes."""
        return self.data_dir / "estimate-counts.json"


@lru_cache
def get_settings() -> Settings:
    return Settings()
