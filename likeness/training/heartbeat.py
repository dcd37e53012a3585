"""The driver's heartbeat: how a job's pod (its watchdog) and the sweeper know the driver is still there.

`<job prefix>heartbeat.json` holds which pod is the job's, the driver's flow run, the time, a count of the writes,
and whether the job is over. The driver writes it before it creates a pod, then every `heartbeat_every_s` on a
thread of its own (`beating`), and "done" when the pod has ended.

    heartbeat = DriverHeartbeat(store, job_prefix(job_id), pod_config, flow_run_id)
    heartbeat.write(None)
    with heartbeat.beating(pod.id):
        ...  # follow the pod
    heartbeat.write(None, done=True)
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from likeness.config import PodConfig
from likeness.storage.store import ArtifactStore, StoreError

log = logging.getLogger(__name__)


def heartbeat_every_s(pod: PodConfig) -> float:
    """How often the driver writes its heartbeat and the pod reads it: a tenth of the bound, 30 s at most."""
    return min(pod.driver_timeout_s / 10, 30.0)


class DriverHeartbeat:
    """The heartbeat of one job's driver in the store."""

    def __init__(self, store: ArtifactStore, prefix: str, pod: PodConfig, flow_run_id: str | None) -> None:
        self.store, self.pod, self.flow_run_id = store, pod, flow_run_id
        self.key = f"{prefix}heartbeat.json"
        self._beats = 0

    def write(self, pod_id: str | None, done: bool = False) -> None:
        """The driver is alive (or done) and which pod is its.

        Each write differs from the last (`beat` counts them): the pod judges the heartbeat by whether it changes,
        on its own clock; the sweeper compares `time` with its clock.
        """
        self._beats += 1
        record = {
            "pod_id": pod_id,
            "flow_run_id": self.flow_run_id,
            "time": time.time(),
            "beat": self._beats,
            "done": done,
        }
        self.store.put_bytes(self.key, json.dumps(record).encode())

    @contextmanager
    def beating(self, pod_id: str) -> Iterator[None]:
        """Write the heartbeat every `heartbeat_every_s` on a thread of its own while the block runs, however long
        the follow loop spends publishing a checkpoint; a write that fails is retried at the next beat."""
        stop = threading.Event()
        every = heartbeat_every_s(self.pod)

        def beat() -> None:
            while not stop.wait(every):
                try:
                    self.write(pod_id)
                except StoreError as error:
                    log.warning("could not write the heartbeat of pod %s: %s", pod_id, error)

        thread = threading.Thread(target=beat, name=f"likeness-heartbeat-{pod_id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
