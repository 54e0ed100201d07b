"""Inference off the GUI thread, the way Slicer lets a Python thread run.

Slicer's GUI thread holds Python's GIL while it sits in Qt's event loop, so a worker thread only runs while
the GUI thread is in Python code that releases it. ``Worker`` keeps one persistent thread (the model is
loaded once and stays with it); ``Worker.run`` hands it a job and has the GUI thread wait in
``threading.Event.wait(0.03)`` (which releases the GIL) between calls to ``process_events`` (Slicer's
``slicer.app.processEvents``), so the panel stays live while the worker gets nearly all the CPU. After
``slow_after`` seconds ``on_slow`` is called once (the widget shows a modal progress dialog then), and
``cancelled()`` is polled so a long job can be given up (its result is then dropped).

MRML and Qt are touched only on the GUI thread: a job is plain engine work (tool and policy).
No Qt import here: it runs, and is tested, outside Slicer.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

WAIT_S = 0.03  # the GUI thread's sleep between event-processing rounds (SlicerNNInteractive's figure)


class WorkerCancelled(RuntimeError):
    """The clinician cancelled a long job; its result was dropped."""


@dataclass
class Job:
    function: Callable[[], Any]
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: Optional[BaseException] = None


class Worker:
    """One daemon thread that runs jobs in order, for the lifetime of the panel."""

    def __init__(self, name: str = "MedSAMAgent worker"):
        self._name = name
        self._jobs: "queue.Queue[Optional[Job]]" = queue.Queue()
        self._thread: Optional[threading.Thread] = None
        self.current: Optional[Job] = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                job.result = job.function()
            except BaseException as error:  # handed to the GUI thread, which reports it
                job.error = error
            finally:
                job.done.set()

    def submit(self, function: Callable[[], Any]) -> Job:
        if not self.alive:
            self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
            self._thread.start()
        job = Job(function)
        self.current = job
        self._jobs.put(job)
        return job

    def run(self, function: Callable[[], Any], process_events: Callable[[], Any] = lambda: None,
            slow_after: float = 1.0, on_slow: Optional[Callable[[], Any]] = None,
            cancelled: Callable[[], bool] = lambda: False) -> Any:
        """Run ``function`` on the worker; the calling (GUI) thread waits releasing the GIL and keeps
        processing events. Returns the result or raises the job's error (``WorkerCancelled`` if cancelled)."""
        job = self.submit(function)
        start = time.monotonic()
        slow_called = False
        while not job.done.wait(WAIT_S):
            process_events()
            if cancelled():
                raise WorkerCancelled("cancelled: the result of this step will be dropped")
            if not slow_called and on_slow is not None and time.monotonic() - start >= slow_after:
                slow_called = True
                on_slow()
        if self.current is job:
            self.current = None
        if job.error is not None:
            raise job.error
        return job.result

    def drain(self, timeout: Optional[float] = None) -> bool:
        """Wait (without processing events) until the current job is done; True if none is left running.
        Used when the scene closes: nothing may still be computing on it."""
        job = self.current
        return job is None or job.done.wait(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """End the thread after the current job (the panel is being cleaned up)."""
        if self.alive:
            self._jobs.put(None)
            self._thread.join(timeout)
        self._thread = None
        self.current = None


def wait_until(predicate: Callable[[], bool], process_events: Callable[[], Any], timeout: float = 60.0) -> bool:
    """Let the GUI run (events processed, GIL released between rounds) until ``predicate()`` holds; False on
    timeout. For the self-test and scripts that wait for the autopilot."""
    idle = threading.Event()
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            return False
        process_events()
        idle.wait(WAIT_S)
    return True
