"""Prefect results and cache records in the artifact store, so work done on one machine is a cache hit on all.

A Prefect result storage block whose reads and writes go to the artifact store under `prefect-results/`.
The block holds no connection details: each machine opens the store its own `LIKENESS_*` settings name
(the same bucket, with that machine's credentials), so nothing secret is saved in Prefect.

    save_results_block(server_default=True)   # `likeness deploy`: every run on that server, on any worker
    with temporary_settings({PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK: save_results_block()}):
        ...                                   # the CLI: the runs of this process

Importing this module registers the block class: the flows import it (through `likeness.storage.caching`)
before Prefect resolves a run's result storage.
"""

from __future__ import annotations

from typing import ClassVar

from prefect._internal.compatibility.async_dispatch import async_dispatch
from prefect.filesystems import WritableFileSystem

from likeness.storage.artifacts import get_store
from likeness.storage.store import MissingObject

RESULTS_PREFIX = "prefect-results"
BLOCK_NAME = "likeness-results"
# Each lost race means another process created what this one meant to; three would need new objects in between.
REGISTER_TRIES = 5


class ArtifactStoreResults(WritableFileSystem):
    """Prefect results in the Likeness artifact store this machine's settings name."""

    _block_type_name: ClassVar[str] = "Likeness Artifact Store"
    _block_type_slug: ClassVar[str] = "likeness-artifact-store"
    _description: ClassVar[str] = "Prefect results and cache records beside the Likeness artifacts."

    prefix: str = RESULTS_PREFIX

    def _key(self, path: str) -> str:
        return f"{self.prefix.strip('/')}/{path.lstrip('/')}"

    async def aread_path(self, path: str) -> bytes:
        return self._read(path)

    @async_dispatch(aread_path)
    def read_path(self, path: str) -> bytes:
        return self._read(path)

    async def awrite_path(self, path: str, content: bytes) -> None:
        get_store().put_bytes(self._key(path), content)

    @async_dispatch(awrite_path)
    def write_path(self, path: str, content: bytes) -> None:
        get_store().put_bytes(self._key(path), content)

    def _read(self, path: str) -> bytes:
        # Prefect treats any error from a read as "no such record".
        try:
            return get_store().get_bytes(self._key(path))
        except MissingObject:
            raise FileNotFoundError(self._key(path)) from None


def save_results_block(server_default: bool = False) -> str:
    """Save the results block on the Prefect server (and make it the default of every run the server sees,
    wherever it runs, when `server_default`); returns its slug, the value of `PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK`."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectAlreadyExists

    # The first runs on a server (or CLIs sharing one PREFECT_HOME) register at once: Prefect reads, finds
    # nothing, creates, and all but one get 409 Conflict. Once one has created it, reading finds it.
    for attempt in range(1, REGISTER_TRIES + 1):
        try:
            ArtifactStoreResults.register_type_and_schema()
            block_id = ArtifactStoreResults().save(BLOCK_NAME, overwrite=True)
            break
        except ObjectAlreadyExists:
            if attempt == REGISTER_TRIES:
                raise
    if server_default:
        with get_client(sync_client=True) as client:
            client.update_server_default_result_storage(block_id)
    return f"{ArtifactStoreResults.get_block_type_slug()}/{BLOCK_NAME}"
