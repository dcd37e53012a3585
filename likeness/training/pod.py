"""The agent a RunPod pod runs: fetch the job, train, publish every checkpoint as it is written, report progress.

It needs only the standard library, so it runs in our worker image and in AI Toolkit's (`ostris/aitoolkit`) alike.
The pod gets one presigned URL (`LIKENESS_JOB_URL`) to a manifest of presigned URLs for exactly its job: the
dataset and any checkpoint to resume from (GET), and each checkpoint, optimizer state, sample, the progress
record and the log it may write (PUT). No storage key and no RunPod key ever reach the pod.

    LIKENESS_JOB_URL=https://... python -m likeness.training.pod

The trainer writes AI Toolkit's training folder (ours does too). A checkpoint is uploaded once it is complete
(its safetensors header and every tensor's bytes are there) and its size has held for one poll, so a file cut
off mid-write, as AI Toolkit's are on Ctrl-C during a save, is never published; `optimizer.pt` goes up after the
checkpoint it belongs to, so a replacement pod resumes from both.

An outage of the store is waited out, up to the job's `upload_patience_s`: a checkpoint whose upload it cut off goes
up again whole once the store answers, and the trainer never waits for it.

A pod never bills past its job: beside the trainer runs its watchdog (`likeness.training.watchdog`), which ends
the pod when its driver is gone, when the job is over, and at the pod's TTL.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path
from typing import Any

from likeness.models.wan_lora import is_complete_safetensors
from likeness.training.watchdog import Watchdog, can_end_itself, end_this_pod, trainer_env

# AI Toolkit's progress bar: a tqdm (ToolkitProgressBar) on stderr, desc = the job's name, total = steps, redrawn
# in place with `\r` (one `\n` when it closes); `run.py --log FILE` tees stdout and stderr into FILE. `step` counts
# finished steps; before the first step there is no postfix, and a loss that went NaN prints as `nan`. The bar is
# unicode blocks on a UTF-8 stream, `#` and digits otherwise; the rate is `it/s` or `s/it`. For example
#   Ada_Lovelace:  10%|█         | 200/2000 [05:12<46:48,  1.56s/it, lr: 1.0e-04 loss: 4.123e-01]
# Our trainer prints the same shape (`likeness.training.native.PROGRESS_LINE`), so this reads both.
_BAR = re.compile(r"^(?P<desc>.*): +\d+%\|[^|]*\| *(?P<step>\d+)/(?P<total>\d+) \[(?P<stats>[^\]]*)\]\s*$")
_LOSS = re.compile(r"\bloss: (?P<loss>[-+]?(?:\d+(?:\.\d*)?(?:e[-+]?\d+)?|nan|inf))")
# Our trainer's line when its samples' identity scores went flat (`likeness.training.native.EARLY_STOP_LINE`).
_EARLY_STOP = re.compile(r"^(?P<name>.*): stopped early at step (?P<step>\d+): (?P<reason>.+)$")
CHECKPOINT_STEP = re.compile(r"_(\d{9})(?:_(?:high|low)_noise)?\.safetensors$")
SAMPLE_PATTERN = re.compile(r"_(\d{9})_(\d+)\.(?:png|jpe?g|webp)$")
LOG_TAIL = 40
# Tries of an upload through a store outage wait 1, 2, 4, ... s, at most this long, until the job's patience is spent.
UPLOAD_RETRY_CAP_S = 15.0


def fetch(url: str, dest: Path) -> None:
    """Download a presigned URL to `dest`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as out:
        shutil.copyfileobj(response, out)


def upload(url: str, path: Path | None = None, data: bytes | None = None, patience_s: float = 60.0) -> None:
    """PUT a file or bytes to a presigned URL, trying again through a store outage of up to `patience_s`.

    S3 writes an object whole or not at all, so a PUT cut off mid-way leaves nothing, and one sent again after an
    answer was lost writes the same bytes to the same key. A refusal (4xx: an expired or wrong URL) is final.
    """
    size = path.stat().st_size if path is not None else len(data or b"")
    deadline, wait = time.monotonic() + patience_s, 1.0
    while True:
        body: Any = open(path, "rb") if path is not None else (data or b"")
        try:
            request = urllib.request.Request(url, data=body, method="PUT", headers={"Content-Length": str(size)})
            with urllib.request.urlopen(request, timeout=300):
                return
        except urllib.error.HTTPError as error:
            if error.code < 500 or time.monotonic() + wait > deadline:
                raise
        except OSError:
            if time.monotonic() + wait > deadline:
                raise
        finally:
            if path is not None:
                body.close()
        time.sleep(wait)
        wait = min(2 * wait, UPLOAD_RETRY_CAP_S)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def parse_progress(line: str, name: str | None = None) -> tuple[int, int, float | None] | None:
    """(step, total, loss) from AI Toolkit's training progress bar in `line`, the last redraw; None if it has none.

    With `name` (the job's name) only that bar counts; without, only a redraw with the trainer's `lr:` postfix, so
    other bars (latent caching, checkpoint shards, sample generation) are never taken for training steps.
    """
    for redraw in reversed(re.split(r"[\r\n]", line)):
        match = _BAR.match(redraw.strip())
        if not match:
            continue
        stats = match["stats"]
        ours = match["desc"] == name if name is not None else "lr: " in stats
        if not ours:
            continue
        loss = _LOSS.search(stats)
        return int(match["step"]), int(match["total"]), float(loss["loss"]) if loss else None
    return None


def parse_early_stop(line: str, name: str) -> dict[str, Any] | None:
    """{"step", "reason"} from our trainer's line saying it stopped early (job `name`); None for any other line."""
    match = _EARLY_STOP.match(line.strip())
    if not match or match["name"] != name:
        return None
    return {"step": int(match["step"]), "reason": match["reason"]}


class Agent:
    """One pod's job: the manifest, the trainer process, and what has gone up so far."""

    def __init__(self, manifest: dict[str, Any], workspace: Path) -> None:
        self.manifest, self.workspace = manifest, workspace
        self.folder = workspace / manifest["training_folder"]
        self.uploads: dict[str, Any] = manifest["uploads"]
        self.uploaded: dict[str, str] = {}  # what went up -> its sha256
        # A store outage shorter than this is waited out (the trainer goes on meanwhile); a longer one ends the job.
        self.patience_s = float(manifest.get("upload_patience_s", 60.0))
        self.sizes: dict[Path, int] = {}
        self.step, self.total, self.loss = 0, manifest["total_steps"], None
        # Where our trainer stopped before the last step, and why (train.stop_when_flat).
        self.stopped_early: dict[str, Any] | None = None
        self.log = workspace / "train.log"
        self.tail: deque[str] = deque(maxlen=LOG_TAIL)
        self.lock = threading.Lock()

    def prepare(self) -> list[str]:
        """Fetch the dataset, the trainer's config and any checkpoint to resume from; the trainer's command."""
        for item in self.manifest["files"]:
            dest = self.workspace / item["path"]
            if "text" in item:
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_text(item["text"])
            else:
                fetch(item["url"], dest)
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.manifest["backend"] == "aitoolkit":
            toolkit = os.environ.get("AITOOLKIT_DIR", "/app/ai-toolkit")
            return [sys.executable, f"{toolkit}/run.py", str(self.workspace / "config.yaml")]
        return [
            sys.executable, "-m", "likeness.training.native", str(self.workspace / "job.json"),
            "--dataset", str(self.workspace / "dataset"), "--masks", str(self.workspace / "masks"),
            "--out", str(self.folder),
        ]  # fmt: skip

    def run(self) -> int:
        """Train to the end, publishing as it goes; the trainer's exit code."""
        command = self.prepare()
        with open(self.log, "a") as log:
            process = subprocess.Popen(
                command,
                cwd=self.workspace,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                bufsize=1,
                env=trainer_env(os.environ),
            )
            reader = threading.Thread(target=self._read, args=(process, log), daemon=True)
            reader.start()
            every = float(self.manifest.get("progress_every_s", 5))
            while process.poll() is None:
                self.publish("running")
                time.sleep(every)
            reader.join(timeout=10)
        code = process.returncode
        self.publish("done" if code == 0 else "failed", exit_code=code)
        upload(self.uploads["log"], path=self.log, patience_s=self.patience_s)
        return code

    def _read(self, process: subprocess.Popen[str], log: Any) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            log.write(line)
            log.flush()
            with self.lock:
                self.tail.append(line.rstrip())
                parsed = parse_progress(line, self.manifest["name"])
                if parsed:
                    self.step, self.total, loss = parsed
                    self.loss = loss if loss is not None else self.loss
                self.stopped_early = parse_early_stop(line, self.manifest["name"]) or self.stopped_early

    def publish(self, status: str, exit_code: int | None = None) -> None:
        """Upload what is newly complete, then the progress record that lists it."""
        self._upload_checkpoints(final=status != "running")
        self._upload_samples(final=status != "running")
        with self.lock:
            record = {
                "status": status,
                "step": self.step,
                "total": self.total,
                "loss": self.loss,
                "uploaded": dict(self.uploaded),
                "exit_code": exit_code,
                "stopped_early": self.stopped_early,
                "log_tail": list(self.tail) if status == "failed" else [],
                "time": time.time(),
            }
        upload(self.uploads["progress"], data=json.dumps(record).encode(), patience_s=self.patience_s)

    def _size_held(self, path: Path, final: bool) -> bool:
        """The same size as at the last look (a trainer that exited writes no more)."""
        size = path.stat().st_size
        previous, self.sizes[path] = self.sizes.get(path), size
        return final or previous == size

    def _stable(self, path: Path, final: bool) -> bool:
        """Complete, and done growing."""
        return self._size_held(path, final) and is_complete_safetensors(path)

    def _upload_checkpoints(self, final: bool) -> None:
        for name, url in self.uploads["checkpoints"].items():
            path = self.folder / name
            if name not in self.uploaded and path.is_file() and self._stable(path, final):
                self._put(name, url, path)
        self._upload_optimizer(final)

    def _put(self, name: str, url: str, path: Path) -> bool:
        """Upload `path` and count it as up only if it did not change meanwhile (else the next look sends it)."""
        digest = sha256_of(path)
        upload(url, path=path, patience_s=self.patience_s)
        if sha256_of(path) != digest:
            return False
        self.uploaded[name] = digest
        return True

    def _newest_on_disk(self) -> tuple[int, float] | None:
        """The newest numbered checkpoint in the training folder, uploaded or not, and when it was written."""
        found = [
            (int(match[1]), path.stat().st_mtime)
            for path in self.folder.glob("*.safetensors")
            if (match := CHECKPOINT_STEP.search(path.name))
        ]
        return max(found) if found else None

    def _upload_optimizer(self, final: bool) -> None:
        """`optimizer.pt` as the state of the newest checkpoint, only while no newer save can have replaced it."""
        state, newest = self.folder / "optimizer.pt", self._newest_on_disk()
        if newest is None or not state.is_file():
            return
        step, written = newest
        key = f"optimizer_{step:09d}.pt"
        names = [n for n in self.uploads["checkpoints"] if CHECKPOINT_STEP.search(n) and f"_{step:09d}" in n]
        if key not in self.uploads["optimizer"] or key in self.uploaded or not all(n in self.uploaded for n in names):
            return
        before = state.stat()
        stable = self._size_held(state, final)
        if before.st_mtime < written or not stable:
            return
        # A save that landed meanwhile would have replaced the file: then this upload was of a later state.
        if self._put(key, self.uploads["optimizer"][key], state) and self._newest_on_disk() != newest:
            del self.uploaded[key]

    def _upload_samples(self, final: bool) -> None:
        folder = self.folder / "samples"
        for path in sorted(folder.glob("*")) if folder.is_dir() else []:
            match = SAMPLE_PATTERN.search(path.name)
            key = f"sample_{int(match[1]):09d}_{match[2]}" if match else None
            # A trainer writes its samples in place (PIL, AI Toolkit): send one once it has stopped growing.
            wanted = key and key in self.uploads["samples"] and key not in self.uploaded
            if wanted and self._size_held(path, final):
                self._put(key, self.uploads["samples"][key], path)


def fetch_manifest(url: str, dest: Path, tries: int = 4) -> dict[str, Any]:
    for attempt in range(tries):
        try:
            fetch(url, dest)
            return json.loads(dest.read_text())
        except (OSError, ValueError):
            if attempt == tries - 1:
                raise
            time.sleep(2**attempt)
    raise AssertionError("unreachable")


def main() -> int:
    """Run the job the pod was given (LIKENESS_JOB_URL) in LIKENESS_WORKSPACE, then end the pod."""
    started = time.monotonic()
    workspace = Path(os.environ.get("LIKENESS_WORKSPACE", "/workspace/likeness")).resolve()
    workspace.mkdir(parents=True, exist_ok=True)
    ending = can_end_itself()
    if not ending:
        print("likeness agent: no RUNPOD_POD_ID with a RunPod key or runpodctl: this pod cannot end itself", flush=True)
    try:
        manifest = fetch_manifest(os.environ["LIKENESS_JOB_URL"], workspace / "manifest.json")
    except (OSError, ValueError, KeyError) as error:
        # No job to run and no heartbeat to watch: nothing to keep the pod for.
        while ending and not end_this_pod(f"its job could not be read ({type(error).__name__})"):
            time.sleep(30)
        raise
    watchdog = Watchdog.from_manifest(manifest, started)
    if ending:
        watchdog.start()
    why = "the agent stopped"
    try:
        code = Agent(manifest, workspace).run()
    except Exception as error:
        why = f"the agent failed ({type(error).__name__}: {error})"
        raise
    else:
        why = "its job is done" if code == 0 else f"its job failed (the trainer exited {code})"
        return code
    finally:
        if ending:
            watchdog.job_over(why)
            watchdog.wait()


if __name__ == "__main__":
    sys.exit(main())
