"""Shared fixtures: tiny models built once per session, an isolated data folder per test, servers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

# One intra-op thread for the tests that run models in the pytest workers too, set before anything imports torch:
# several workers on two cores, each with a thread per core, spin against each other and the CLIs they start
# (tests/test_render.py, test_stages.py and test_uso_refine.py together: 50 s of CPU with two threads, 44 s with one).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest

from likeness.heap import collect_less_often
from tests.prefect_server import prefect_api, quiet_prefect_env  # noqa: F401  (fixtures)
from tests.s3server import s3_server  # noqa: F401

# The workers import the same libraries as a Likeness process and collect their heap as one does.
collect_less_often()


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One models folder for the whole run, every xdist worker's too, so the tiny models are built once (a role's
    folder appears whole, renamed into place, so workers building the same role at once keep the first)."""
    basetemp = tmp_path_factory.getbasetemp()
    # An xdist worker's basetemp is a folder of the run's own (popen-gw0, ...).
    shared = basetemp.parent if os.environ.get("PYTEST_XDIST_WORKER") else basetemp
    models = shared / "models"
    models.mkdir(exist_ok=True)
    return models


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


# The files that take longest (from `--durations`), longest first. xdist's `--dist loadfile` hands files to its
# workers in collection order (with `--no-loadscope-reorder`; by default, most tests first): started last, one of these
# would run alone at the end while the other worker idles.
LONGEST_FILES = (
    "test_operations_e2e.py",
    "test_cli_e2e.py",
    "test_cli_outputs.py",
    "test_runpod_training.py",
    "test_cli_interrupts.py",
    "test_batch.py",
    "test_ui_pictures.py",
    "test_estimate_roles.py",
    "test_startup_race.py",
)


# Markers of tests that take minutes each and run only when a `-m` expression names them: the load tests and the
# README's own commands.
ONLY_WHEN_NAMED = ("scale", "readme")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Longest files first; the `scale` and `readme` tests (minutes each) only when a `-m` expression names them."""
    items.sort(key=lambda item: _rank(item.path.name))
    expression = config.getoption("markexpr") or ""
    unnamed = [marker for marker in ONLY_WHEN_NAMED if marker not in expression]
    deselected = [item for item in items if any(item.get_closest_marker(marker) for marker in unnamed)]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        dropped = set(deselected)
        items[:] = [item for item in items if item not in dropped]


def _rank(file_name: str) -> int:
    return LONGEST_FILES.index(file_name) if file_name in LONGEST_FILES else len(LONGEST_FILES)


@pytest.fixture
def packaged_counts(tmp_path: Path) -> Iterator[None]:
    """The estimate's counts kept in this test's own file, beside the packaged ones it reads first."""
    from likeness.estimate import roles

    roles.keep_counts_in(tmp_path / "estimate-counts.json")
    yield
    roles.keep_counts_in(None)
