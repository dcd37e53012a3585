# The flows are what a worker's flow run process imports first of ours: its collector set for the heap of torch and
# diffusers before they import (likeness.heap), and the block that keeps Prefect results in the artifact store
# registered before the run resolves its storage.
from likeness.heap import collect_less_often

collect_less_often()

import likeness.storage.results  # noqa: E402, F401
