# Registers the block that keeps Prefect results in the artifact store, before any flow run resolves its storage.
import likeness.storage.results  # noqa: F401
