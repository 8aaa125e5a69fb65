"""Comparison jobs: worker threads, progress, and a store that forgets.

The web server's event loop never runs model code. A comparison is a
:class:`Job` run by a :class:`Worker` on a thread pool; each pool thread codes
with its own copy of the model (the model keeps per-call state — the current
λ, the gates' last decisions, the FLOP count's sparse switch — so threads must
not share one). Torch releases the GIL in its kernels, so one large image
does not stop a small one from being coded beside it, and the server keeps
answering while both run. Counting FLOPs for the gating report is the
exception: it runs alone (:class:`SharedExclusive`), after the job's panels are
published, so a long encode elsewhere delays only that report.

:class:`JobStore` keeps finished jobs (their files: the decoded images, the
codecs' files) in memory for the page to fetch: at most ``max_jobs`` of them,
holding at most ``max_bytes`` of files, each for at most ``ttl_s`` seconds; the
oldest go first. Nothing is written to disk. The number of jobs running or
waiting for a worker is bounded too (:class:`Busy` beyond it), so memory stays
bounded however many uploads come.
"""

from __future__ import annotations

import copy
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from .compare import Target, compare, gating_report, png_bytes

__all__ = ["Busy", "Job", "JobStore", "SharedExclusive", "Worker"]


class SharedExclusive:
    """Many holders of :meth:`shared` at once, or one of :meth:`exclusive`.

    Counting FLOPs (:class:`torch.utils.flop_counter.FlopCounterMode`) installs
    *global* module hooks that would fire inside every other thread's model
    calls, so a count runs alone: coding holds the lock shared, a count
    exclusively. A waiting exclusive holder goes before new shared ones.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._waiting = 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive or self._waiting:
                self._cond.wait()
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            while self._exclusive or self._shared:
                self._cond.wait()
            self._waiting -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


class Busy(Exception):
    """Too many comparisons waiting: try again later."""


@dataclass
class Job:
    """One comparison. ``files`` maps a name to ``(bytes, media type)``.

    ``state`` ``panels``: ``result`` holds the four panels, the gating report
    (gated models) is still being counted; ``done``: everything is there.
    """

    id: str
    name: str
    target: Target
    state: str = "queued"  # queued → running → (panels →) done | error
    progress: float = 0.0
    message: str = "waiting for a worker"
    result: dict | None = None
    error: str | None = None
    files: dict[str, tuple[bytes, str]] = field(default_factory=dict, repr=False)
    created: float = field(default_factory=time.monotonic)
    finished: float | None = None

    def nbytes(self) -> int:
        return sum(len(data) for data, _ in self.files.values())

    def status(self) -> dict:
        return {"id": self.id, "name": self.name, "state": self.state,
                "progress": round(self.progress, 3), "message": self.message,
                "error": self.error, "result": self.result}


class JobStore:
    """Jobs by id, bounded in number, bytes and age (oldest finished jobs dropped first).

    ``max_bytes`` bounds the files held by finished jobs; the newest finished job
    is kept even if it alone is over (the page is about to fetch its images).
    """

    def __init__(self, max_jobs: int = 8, ttl_s: float = 1800.0,
                 max_bytes: int = 512 << 20) -> None:
        self.max_jobs, self.ttl_s, self.max_bytes = max_jobs, ttl_s, max_bytes
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, job: Job) -> None:
        with self._lock:
            self._jobs[job.id] = job
            self._prune()

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            self._prune()
            return self._jobs.get(job_id)

    def remove(self, job_id: str) -> bool:
        with self._lock:
            return self._jobs.pop(job_id, None) is not None

    def __len__(self) -> int:
        with self._lock:
            return len(self._jobs)

    def _prune(self) -> None:
        now = time.monotonic()
        for jid in [j.id for j in self._jobs.values()
                    if j.finished is not None and now - j.finished > self.ttl_s]:
            del self._jobs[jid]
        finished = [j.id for j in self._jobs.values() if j.finished is not None]
        while len(self._jobs) > self.max_jobs and finished:
            del self._jobs[finished.pop(0)]
        held = sum(j.nbytes() for j in self._jobs.values())
        while held > self.max_bytes and len(finished) > 1:
            held -= self._jobs.pop(finished.pop(0)).nbytes()


class Worker:
    """Runs comparisons on ``threads`` threads, each with its own copy of ``model``.

    ``max_waiting`` bounds the jobs queued or running at once; :meth:`submit`
    raises :class:`Busy` beyond it.
    """

    def __init__(self, model, threads: int = 2, max_waiting: int = 8,
                 store: JobStore | None = None) -> None:
        self.model = model
        self.store = store or JobStore()
        self.max_waiting = max_waiting
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="varicodec-job")
        self._local = threading.local()
        self._active = 0
        self._lock = threading.Lock()
        self._torch = SharedExclusive()
        self._dense_flops: dict = {}  # padded shape → dense FLOP counts (one model)

    def _thread_model(self):
        m = getattr(self._local, "model", None)
        if m is None:
            m = self._local.model = copy.deepcopy(self.model).eval()
        return m

    def submit(self, rgb: np.ndarray, target: Target, name: str = "image",
               notes: list[str] | None = None,
               on_done: Callable[[Job], None] | None = None) -> Job:
        with self._lock:
            if self._active >= self.max_waiting:
                raise Busy(f"{self._active} comparisons are already running or waiting; "
                           "try again in a moment")
            self._active += 1
        job = Job(id=secrets.token_urlsafe(12), name=name, target=target)
        self.store.add(job)
        try:
            self._pool.submit(self._run, job, rgb, list(notes or []), on_done)
        except RuntimeError:  # shutting down
            with self._lock:
                self._active -= 1
            raise Busy("the server is shutting down") from None
        return job

    def _run(self, job: Job, rgb: np.ndarray, notes: list[str],
             on_done: Callable[[Job], None] | None) -> None:
        try:
            job.state = "running"

            def progress(fraction: float, message: str) -> None:
                job.progress, job.message = fraction, message

            model = self._thread_model()
            with self._torch.shared():
                c = compare(rgb, model, job.target, progress=progress, gating=False)
            files = {"original.png": (png_bytes(rgb), "image/png")}
            types = {"vcd": "application/octet-stream", "jpg": "image/jpeg",
                     "webp": "image/webp", "avif": "image/avif"}
            for p in c.panels:
                assert p.decoded is not None
                files[f"{p.codec}.png"] = (png_bytes(p.decoded), "image/png")
                files[f"{p.codec}.{p.extension}"] = (p.data, types[p.extension])
            summary = c.summary()
            summary["notes"] = notes + summary["notes"]
            summary["image"]["name"] = job.name
            job.files = files
            job.result = summary
            if model.gated:  # the panels are shown while the FLOPs are counted
                job.state, job.message = "panels", "gating: counting FLOPs"
                try:
                    with self._torch.exclusive():
                        summary["gating"] = gating_report(model, rgb, c.lmbda,
                                                          self._dense_flops)
                except Exception as e:  # the panels stand without it
                    summary["gating"] = {"skipped": f"FLOPs not counted: {_one_line(e)}"}
            job.state = "done"
        except MemoryError:
            job.error, job.state = "out of memory coding this image", "error"
        except Exception as e:  # reported on the page, never a dead job
            job.error, job.state = _one_line(e), "error"
        finally:
            job.finished = time.monotonic()
            job.progress = 1.0
            job.message = "done" if job.state == "done" else "failed"
            with self._lock:
                self._active -= 1
            if on_done is not None:
                on_done(job)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__
