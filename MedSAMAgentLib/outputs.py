"""Writing results so that nothing is lost: atomic file writes and one run per output folder.

- ``atomic_path(path)``: a temporary name next to ``path`` (same suffix, so writers that pick the format
  from the extension still work), moved over ``path`` only when the block ends without an error. A killed
  run leaves the earlier file untouched (and at most a ``.tmp-*`` file beside it).
- ``write_text_atomic``: the same for a text file.
- ``OutputLock(folder)``: an exclusive ``flock`` on ``folder/.medsam-agent.lock`` for the whole run; a second
  run on the same folder is refused with a message naming the folder and the holder's pid. The operating
  system drops the lock when the process dies (kill -9 included), so a stale lock file never blocks a rerun.
  Taking it also proves the folder is writable before any work starts.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator, Optional

LOCK_NAME = ".medsam-agent.lock"


class OutputError(RuntimeError):
    """The output folder cannot be used (not writable, or another run holds it)."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    handle, name = tempfile.mkstemp(prefix=f".{path.stem}.tmp-", suffix=suffix, dir=path.parent)
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)
    return Path(path)


class OutputLock:
    """Hold ``folder`` for one run (see the module docstring); a context manager."""

    def __init__(self, folder: str | os.PathLike, what: str = "run"):
        self.folder = Path(folder)
        self.what = what
        self._handle: Optional[int] = None

    def acquire(self) -> "OutputLock":
        import fcntl

        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            handle = os.open(self.folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise OutputError(f"cannot write to the output folder {self.folder}: "
                              f"{error.strerror or error}") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(handle, 100).decode("ascii", "replace").strip() or "unknown"
            os.close(handle)
            raise OutputError(f"another medsam-agent run (pid {holder}) is writing to {self.folder}; wait for it "
                              "to finish or choose another --out") from None
        os.ftruncate(handle, 0)
        os.write(handle, f"{os.getpid()} {self.what}\n".encode("ascii"))
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is not None:
            os.close(self._handle)  # closing drops the flock; the file stays (harmless, reused next time)
            self._handle = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
