"""The pod's watchdog: a pod never bills past its job, whether its driver lives or not.

Beside the trainer, `Watchdog` (its rule `DriverWatch`) ends the pod it runs on when its driver's heartbeat
(`<job>/heartbeat.json`, read through a presigned GET URL) has not changed for the manifest's `driver_timeout_s` of
this pod's own clock (no clock is compared across machines; a read that fails is no evidence either way), when the
driver says the job is over, when the job is done or failed (after its last upload), and at the pod's TTL. It ends
the pod as RunPod documents for a pod: GraphQL `podTerminate` with the pod-scoped key RunPod puts in the pod's
environment (`RUNPOD_API_KEY`, `RUNPOD_POD_ID`), else `runpodctl remove pod`, and as a last resort a stop (`podStop`,
`runpodctl stop pod`), which ends the GPU's billing. Standard library only, like the agent that starts it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from typing import Any

from likeness import __version__

# RunPod's API for a pod to end itself; RUNPOD_API_BASE_URL (what the SDK reads) points elsewhere, as in tests.
RUNPOD_API = "https://api.runpod.io"
# What a heartbeat read that found no object (HTTP 404) is taken as: a content like any other, so it may not last.
MISSING = b"<no heartbeat object>"
_SECRET_IN_TEXT = re.compile(r"(api_key=|Bearer\s+)[^\s&'\"]+", re.IGNORECASE)


def trainer_env(env: Any) -> dict[str, str]:
    """The trainer's environment: the pod's, without the pod's RunPod key (only the watchdog needs it)."""
    return {name: value for name, value in env.items() if name != "RUNPOD_API_KEY"}


class DriverWatch:
    """Whether the pod should end now: the rule, fed each heartbeat read with the time on the pod's own clock.

    The heartbeat is judged by its content, never by the time written in it (the driver's clock): the pod ends once
    the content it read has not changed for `timeout_s`, measured from the read that first showed that content. A
    read that failed (`None`) changes nothing, so a store the pod cannot reach keeps it going, until its TTL. No
    heartbeat object (`MISSING`, HTTP 404) counts as a content: the driver writes one before it creates the pod, so
    one missing for `timeout_s` means no driver. A heartbeat that says the job is done, or names another pod as the
    driver's, ends the pod at once; so does `job_over`.

        watch = DriverWatch(timeout_s=300, ttl_s=6 * 3600, started=time.monotonic(), pod_id="abc")
        watch.observe(time.monotonic(), b'{"time": 1}')      # None: keep going
    """

    def __init__(self, timeout_s: float, ttl_s: float, started: float, pod_id: str | None = None) -> None:
        self.timeout_s, self.ttl_s, self.started, self.pod_id = timeout_s, ttl_s, started, pod_id
        self.content: bytes | None = None  # the heartbeat as last read, None before any read succeeded
        self.since: float | None = None  # when the pod first read that content
        self.over: str | None = None

    def job_over(self, why: str) -> None:
        self.over = why

    def observe(self, now: float, heartbeat: bytes | None) -> str | None:
        """Why the pod should end now (the reason, for its log), or None to keep going."""
        if self.over:
            return self.over
        if now - self.started >= self.ttl_s:
            return f"it reached its TTL ({self.ttl_s:g} s since the agent started)"
        if heartbeat is None:
            return None
        if heartbeat != MISSING:
            beat = _json_object(heartbeat)
            if beat.get("done"):
                return "its driver says the job is over"
            other = beat.get("pod_id")
            if other and self.pod_id and other != self.pod_id:
                return f"its driver has moved on to pod {other}"
        if heartbeat != self.content or self.since is None:
            self.content, self.since = heartbeat, now
            return None
        unchanged = now - self.since
        if unchanged >= self.timeout_s:
            what = "no heartbeat object" if heartbeat == MISSING else "its driver's heartbeat unchanged"
            return f"{what} for {unchanged:.0f} s (bound {self.timeout_s:g} s): its driver is gone"
        return None


def _json_object(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def read_heartbeat(url: str) -> bytes | None:
    """The heartbeat's bytes, MISSING if the store has no such object, None if it could not be read."""
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.read()
    except urllib.error.HTTPError as error:
        return MISSING if error.code == 404 else None
    except (OSError, ValueError):
        return None


def _scrub(text: str, key: str | None) -> str:
    text = text.replace(key, "***") if key else text
    return _SECRET_IN_TEXT.sub(r"\1***", text)


def _graphql(mutation: str, pod_id: str, key: str, env: Any) -> None:
    """Run `mutation` on this pod through RunPod's GraphQL API with the pod's key; RuntimeError if refused."""
    base = (env.get("RUNPOD_API_BASE_URL") or RUNPOD_API).rstrip("/")
    # podTerminate answers a scalar; podStop the pod, of which a field must be selected.
    selection = " { id desiredStatus }" if mutation == "podStop" else ""
    query = f"mutation {{ {mutation}(input: {{podId: {json.dumps(pod_id)}}}){selection} }}"
    request = urllib.request.Request(
        f"{base}/graphql",
        data=json.dumps({"query": query}).encode(),
        method="POST",
        headers={
            "Content-Type": "application/json",
            "Authorization": f"Bearer {key}",
            "User-Agent": f"likeness-pod-agent/{__version__}",
        },
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        body = json.loads(response.read() or b"{}")
    errors = body.get("errors") if isinstance(body, dict) else None
    if errors:
        raise RuntimeError(f"{mutation}: {errors[0].get('message', errors[0])}")


def _runpodctl(verb: str, pod_id: str, env: Any) -> None:
    """`runpodctl VERB pod POD_ID`; RuntimeError if it is not on PATH or fails."""
    runpodctl = shutil.which("runpodctl", path=env.get("PATH"))
    if runpodctl is None:
        raise RuntimeError("runpodctl is not on PATH")
    done = subprocess.run(
        [runpodctl, verb, "pod", pod_id], capture_output=True, text=True, timeout=60, env=dict(env), check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"runpodctl {verb} pod: exit {done.returncode}: {(done.stderr or done.stdout).strip()}")


def can_end_itself(env: Any = os.environ) -> bool:
    """Whether this pod knows its id and has a way to end itself (its RunPod key, or runpodctl)."""
    return bool(env.get("RUNPOD_POD_ID")) and bool(
        env.get("RUNPOD_API_KEY") or shutil.which("runpodctl", path=env.get("PATH"))
    )


def end_this_pod(reason: str, env: Any = os.environ) -> bool:
    """Terminate the pod this runs on (stop it if it cannot be terminated); whether RunPod took the request."""
    pod_id, key = env.get("RUNPOD_POD_ID", ""), env.get("RUNPOD_API_KEY")
    print(f"likeness agent: ending pod {pod_id}: {reason}", flush=True)
    attempts: list[tuple[str, Any]] = []
    for mutation, verb in (("podTerminate", "remove"), ("podStop", "stop")):
        if key:
            attempts.append((f"GraphQL {mutation}", lambda m=mutation: _graphql(m, pod_id, key, env)))
        attempts.append((f"runpodctl {verb} pod", lambda v=verb: _runpodctl(v, pod_id, env)))
    failures = []
    for how, attempt in attempts:
        try:
            attempt()
        except (OSError, ValueError, RuntimeError, subprocess.SubprocessError) as error:
            failures.append(f"{how}: {_scrub(str(error), key)}")
            continue
        print(f"likeness agent: pod {pod_id}: {how} accepted", flush=True)
        return True
    print(f"likeness agent: could not end pod {pod_id}: {'; '.join(failures)}", flush=True)
    return False


class Watchdog:
    """`DriverWatch` on a thread: read the heartbeat every `check_every_s`, end this pod when the rule says so.

    Once the job is over, `job_over` wakes it at once and `wait` blocks until the pod is ending: the agent then
    never returns while its pod bills, retrying the end every `check_every_s` if RunPod refused it.
    """

    def __init__(
        self,
        watch: DriverWatch,
        heartbeat_url: str | None,
        check_every_s: float,
        end_pod: Any = end_this_pod,
        read: Any = read_heartbeat,
        clock: Any = time.monotonic,
    ) -> None:
        self.watch, self.heartbeat_url, self.check_every_s = watch, heartbeat_url, check_every_s
        self.end_pod, self.read, self.clock = end_pod, read, clock
        self.ended: str | None = None
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="likeness-pod-watchdog", daemon=True)

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any], started: float, env: Any = os.environ) -> Watchdog:
        settings = manifest.get("watchdog") or {}
        watch = DriverWatch(
            timeout_s=float(settings.get("driver_timeout_s", 300)),
            ttl_s=float(settings.get("ttl_s", 6 * 3600)),
            started=started,
            pod_id=env.get("RUNPOD_POD_ID"),
        )
        return cls(watch, settings.get("heartbeat"), float(settings.get("check_every_s", 30)))

    def start(self) -> Watchdog:
        self._thread.start()
        return self

    def job_over(self, why: str) -> None:
        self.watch.job_over(why)
        self._wake.set()

    def wait(self) -> None:
        self._thread.join()

    def _run(self) -> None:
        while True:
            over = self.watch.over is not None
            heartbeat = self.read(self.heartbeat_url) if self.heartbeat_url and not over else None
            reason = self.watch.observe(self.clock(), heartbeat)
            if reason and self.end_pod(reason):
                self.ended = reason
                return
            self._wake.wait(self.check_every_s)
            self._wake.clear()
