"""Shared fixtures: tiny models built once per session, an isolated data folder per test, servers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.prefect_server import prefect_api, quiet_prefect_env  # noqa: F401  (fixtures)
from tests.s3server import s3_server  # noqa: F401


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One models folder for the session, so the tiny models are built once."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def face_photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real face photo, taken at test time from matplotlib's sample data (Grace Hopper)."""
    import matplotlib

    source = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    target = tmp_path_factory.mktemp("photos") / "grace_hopper.jpg"
    target.write_bytes(source.read_bytes())
    return target


@pytest.fixture
def likeness_env(tmp_path: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point Likeness' settings at a fresh data folder for this test; returns that folder."""
    from likeness import settings
    from likeness.models import pipelines
    from likeness.storage import artifacts

    data_dir = tmp_path / "likeness-data"
    monkeypatch.setenv("LIKENESS_DATA_DIR", str(data_dir))
    monkeypatch.setenv("LIKENESS_MODELS_DIR", str(models_dir))
    settings.get_settings.cache_clear()
    artifacts.get_store.cache_clear()
    yield data_dir
    settings.get_settings.cache_clear()
    artifacts.get_store.cache_clear()
    pipelines.load_counts.clear()


def cli_env(tmp_path: Path, models_dir: Path, api: str | None) -> dict[str, str]:
    """Environment for a `likeness` subprocess: its own data and Prefect home, loopback only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LIKENESS_", "PREFECT_"))}
    env.update(quiet_prefect_env(tmp_path / "prefect-home"))
    env.pop("PREFECT_API_DATABASE_CONNECTION_URL")
    env["LIKENESS_DATA_DIR"] = str(tmp_path / "likeness-data")
    env["LIKENESS_MODELS_DIR"] = str(models_dir)
    env["HF_HUB_OFFLINE"] = "1"
    # One intra-op thread (torch, MKL and OpenBLAS all read it): the tiny models' tensors are too small to gain from
    # a second, and on a 2-core machine the threads of a CLI, its Prefect server, a batch's other row and pytest
    # spin against each other (a one-shot produce took 53 s with torch's default of a thread per core, 38 s so).
    env["OMP_NUM_THREADS"] = "1"
    if api:
        env["PREFECT_API_URL"] = api
    return env


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The load tests (`scale`, minutes each) run only when a `-m` expression names them: `bin/test -m scale`."""
    if "scale" in (config.getoption("markexpr") or ""):
        return
    deselected = [item for item in items if item.get_closest_marker("scale")]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not item.get_closest_marker("scale")]
