"""The demo's training queue: one erasure trains at a time, in order, on a background thread,
behind a visible queue, with progress and cancel.

A job trains into a hidden temp folder under the erasures folder, renamed to its name when
complete and removed when cancelled or failed, so the folder never shows a half-written erasure.
No UI here: the Gradio app (erasure/demo/app.py) shows `TrainingQueue.status()` and calls
`submit` and `cancel`.
"""
from __future__ import annotations

import itertools
import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from ..trainers.base import TrainingCancelled

log = logging.getLogger("erasure.demo")
ACTIVE = ("waiting", "training")
KEEP_FINISHED = 100  # finished jobs remembered (their progress line), newest last

# train(out, callback=..., **settings): erasure.train's signature (tests pass a fake one)
Train = Callable[..., object]


@dataclass
class Job:
    id: int
    name: str                           # the erasure's folder name under the erasures folder
    settings: dict
    state: str = "waiting"              # waiting, training, done, cancelled, failed
    step: int = 0
    total: int = 0
    loss: float | None = None
    started: float = 0.0                # when training began (after the model loaded: first step)
    message: str = ""
    cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def title(self) -> str:
        return f"{self.settings['method']} '{self.settings['concept']}' → {self.name}"

    def progress(self) -> str:
        if self.state != "training":
            return f"{self.title}: {self.state}" + (f" ({self.message})" if self.message else "")
        if not self.step:
            return f"{self.title}: loading the model and preparing"
        rate = (time.time() - self.started) / max(self.step - 1, 1)  # the first step also warms up
        left = int(rate * (self.total - self.step)) if self.step > 1 else None
        eta = f"{left // 60}:{left % 60:02d} left" if left is not None else "estimating time left"
        return f"{self.title}: step {self.step} / {self.total} · loss {self.loss:.4g} · {eta}"


def _train(out, callback=None, **settings):
    from .. import train  # the package's train(): the registry, the trainers and diffusers, on first use
    return train(out, callback=callback, **settings)


class TrainingQueue:
    """Trains one erasure at a time, in order, on a background thread (see the module docstring)."""

    def __init__(self, root: Path, max_waiting: int, train: Train | None = None) -> None:
        self.root, self.max_waiting = Path(root), max_waiting
        self._train = train or _train
        self.jobs: list[Job] = []
        self._ids = itertools.count(1)
        self._wake = threading.Condition()
        threading.Thread(target=self._work, daemon=True, name="erasure-demo-training").start()

    def taken(self, name: str) -> bool:
        """Whether an erasure `name` exists under the folder or a waiting or running job will write it."""
        return (self.root / name).exists() or any(j.name == name and j.state in ACTIVE for j in self.jobs)

    def submit(self, name: str, settings: dict) -> Job:
        with self._wake:
            if self.taken(name):
                raise UserError(f"an erasure named '{name}' exists or is queued; choose another name")
            if len(self.waiting()) >= self.max_waiting:
                raise UserError(f"the training queue is full ({self.max_waiting} waiting); try again when one has finished")
            job = Job(next(self._ids), name, settings)
            self.jobs = [j for j in self.jobs if j.state in ACTIVE] + \
                [j for j in self.jobs if j.state not in ACTIVE][-KEEP_FINISHED:] + [job]
            self._wake.notify()
        return job

    def get(self, job_id: int | None) -> Job | None:
        return next((j for j in self.jobs if j.id == job_id), None)

    def waiting(self) -> list[Job]:
        return [j for j in self.jobs if j.state == "waiting"]

    def running(self) -> Job | None:
        return next((j for j in self.jobs if j.state == "training"), None)

    def cancel(self, job_id: int | None) -> Job | None:
        job = self.get(job_id)
        if job is not None:
            with self._wake:
                job.cancel.set()
                if job.state == "waiting":
                    job.state, job.message = "cancelled", "before it started"
        return job

    def _work(self) -> None:
        while True:
            with self._wake:
                while not self.waiting():
                    self._wake.wait()
                job = self.waiting()[0]
                job.state = "training"
            self._run(job)

    def _run(self, job: Job) -> None:
        tmp = self.root / f".tmp-{job.name.replace('/', '_')}-{job.id}"

        def progress(step: int, total: int, logs: dict) -> bool:
            if step == 1:
                job.started = time.time()
            job.step, job.total, job.loss = step, total, logs.get("loss", float("nan"))
            return not job.cancel.is_set()

        try:
            if job.cancel.is_set():
                raise TrainingCancelled("cancelled")
            self._train(tmp, callback=progress, **job.settings)
            tmp.rename(self.root / job.name)  # the erasure appears complete or not at all
            job.state, job.message = "done", f"saved as {job.name}"
        except TrainingCancelled:
            job.state, job.message = "cancelled", f"at step {job.step}; nothing was saved"
        except UserError as e:
            job.state, job.message = "failed", str(e)
        except Exception as e:  # a bug: the log gets the traceback, the page one line
            log.exception("training job %s failed", job.id)
            job.state, job.message = "failed", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def status(self, mine: int | None = None) -> str:
        """Markdown: the running job, the queue, and the caller's own last job."""
        lines = []
        running = self.running()
        lines.append(f"**Training:** {running.progress()}" + (" (yours)" if running.id == mine else "")
                     if running else "**Training:** nothing")
        waiting = self.waiting()
        lines += [f"**Waiting ({len(waiting)}):** " + "; ".join(
            f"{i}. {j.title}" + (" (yours)" if j.id == mine else "") for i, j in enumerate(waiting, 1))] if waiting else []
        job = self.get(mine)
        if job is not None and job.state not in ACTIVE:
            lines.append(f"**Your last job:** {job.progress()}")
        return "\n\n".join(lines)
