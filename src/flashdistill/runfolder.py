"""Run folders: what kind of run a folder holds, and one process at a time writing it.

Every command that writes a run into a folder (teacher train / specialize, distill, bench, quickstart, study) claims
it first, `with claim_run(folder, kind):`

- `.flashdistill-run` in the folder records the kind of run it holds (JSON: kind, and the pid and host of the
  process that last claimed it). A folder holding another kind of run is refused before anything is written,
  naming the folder and what it holds: a teacher run would otherwise promote its checkpoint over a distillation
  run's `checkpoint/` and delete the student, critic, EMA and optimizer states.
- A folder without the marker (written before markers existed, or by hand) is recognised by its contents
  (`checkpoint/` with student weights: a distillation run); contents the run would overwrite that nothing
  recognises are refused as well, naming them.
- A folder inside another run's sub-folder that the run replaces whole on every save (`RUN/checkpoint/`,
  `RUN/student/`) is refused: the next save of that run would delete it.
- While the run writes, the claim holds an exclusive `fcntl.flock` on the marker, so a second process given the
  same folder is refused at once (naming the holder's pid). The kernel drops the lock when the holder exits or is
  killed (SIGKILL included), so a crash never leaves a folder locked.
- A claim that ends in an error before the run wrote anything removes the folders it created, so a refused or
  failed start leaves nothing behind.

`check_run(folder, kind)` runs the same checks without creating, writing or locking anything (for an early refusal,
and for the ranks of a torchrun job other than rank 0, which write into the folder rank 0 has claimed).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

from flashdistill.errors import UserError
from flashdistill.files import out_dir

MARKER = ".flashdistill-run"
_CHECKPOINTS = ("checkpoint", "checkpoint.prev", "checkpoint.diverged", "checkpoint.old")


@dataclass(frozen=True)
class Kind:
    title: str  # "a distillation run"
    writes: tuple[str, ...]  # names the run writes at the top of its folder
    replaces: tuple[str, ...]  # sub-folders it replaces whole (atomic saves and exports)
    signs: tuple[tuple[str, str], ...]  # (glob, what it shows) recognising a run written before markers existed


KINDS = {
    "teacher": Kind("a teacher training run", (*_CHECKPOINTS, "teacher", "log.jsonl", "tb"), (*_CHECKPOINTS, "teacher"),
                    (("checkpoint*/model.safetensors", "a checkpoint with teacher weights"),
                     ("teacher/teacher.json", "an exported teacher"))),
    "distill": Kind("a distillation run", (*_CHECKPOINTS, "student", "best", "eval", "log.jsonl", "tb"),
                    (*_CHECKPOINTS, "student", "best"),
                    (("checkpoint*/student.safetensors", "a checkpoint with student weights"),
                     ("checkpoint*/shard-*.safetensors", "a sharded checkpoint"),
                     ("student/student.json", "an exported student"), ("best/student.json", "an exported student"))),
    "bench": Kind("a benchmark run", ("run.json", "cases.jsonl", "results.json", "images", "grid.png"), (),
                  (("run.json", "run.json"), ("cases.jsonl", "cases.jsonl"))),
    "quickstart": Kind("a quickstart run", ("quickstart.json", "distill", "bench", "speed.json", "report.md",
                                             "report.html"), (), (("quickstart.json", "quickstart.json"),)),
    "cache": Kind("a condition cache", ("index.json",), (),
                  (("shard-*.safetensors", "condition-cache shards"),)),
    "pairs": Kind("a pairs cache", ("index.json",), (), (("pairs-*.safetensors", "pairs shards"),)),
    "study": Kind("a study", ("study-state.json", "arms", "study.json", "study.md", "curves.png"), (),
                  (("study-state.json", "study-state.json"),)),
}


def _marked_kind(folder: Path) -> str | None:
    """The kind `.flashdistill-run` records, or None (no marker, or one a killed write left unreadable)."""
    try:
        kind = json.loads((folder / MARKER).read_text(encoding="utf-8")).get("kind")
    except (OSError, ValueError, AttributeError):
        return None
    return kind if kind in KINDS else None


def run_kind(folder: str | Path) -> tuple[str, str] | None:
    """(kind, evidence) of the run `folder` holds, from its marker or, without one, its contents; else None."""
    folder = Path(folder)
    kind = _marked_kind(folder)
    if kind is not None:
        return kind, f"its {MARKER} says so"
    for name, spec in KINDS.items():
        for pattern, shown in spec.signs:
            if any(folder.glob(pattern)):
                return name, f"it has {shown}"
    return None


def _check_ancestors(folder: Path, flag: str) -> None:
    """Refuse a folder inside a sub-folder that an enclosing run replaces whole on every save."""
    here = folder.resolve()
    for parent in here.parents:
        kind = _marked_kind(parent)
        if kind is None:
            continue
        top = here.relative_to(parent).parts[0]
        # `.NAME-tmp-*` / `.NAME-old-*`: the temporary folders of its atomic writes, deleted when it starts
        if top in KINDS[kind].replaces or fnmatch(top, ".*-tmp-*") or fnmatch(top, ".*-old-*"):
            raise UserError(f"{flag} {folder}: lies inside {parent}, {KINDS[kind].title}, whose {top}/ it replaces "
                            f"on every save; choose a folder outside it")


def check_run(folder: str | Path, kind: str, flag: str = "--out") -> Path:
    """Refuse `folder` for a run of `kind` (a file; another kind of run; contents it would overwrite; inside a
    folder another run replaces); nothing is created or written. Returns the folder."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{flag} {folder}: is a file, not a folder")
    _check_ancestors(folder, flag)
    if not folder.is_dir():
        parent = next((p for p in folder.parents if p.exists()), Path("."))
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            raise UserError(f"{flag} {folder}: cannot be created ({parent} is not a writable folder)")
        return folder
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {folder}: the folder is not writable")
    found = run_kind(folder)
    if found is not None and found[0] != kind:
        other, evidence = found
        raise UserError(f"{flag} {folder}: holds {KINDS[other].title} ({evidence}); {KINDS[kind].title} there would "
                        f"overwrite it: choose another {flag}")
    if found is None:
        clash = sorted(name for name in KINDS[kind].writes if (folder / name).exists())
        if clash:
            raise UserError(f"{flag} {folder}: holds {', '.join(clash)}, which {KINDS[kind].title} would overwrite, "
                            f"and nothing says which run wrote them: choose another {flag}")
    return folder


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        return f"pid {int(info['pid'])} on {info['host']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "pid unknown"


class RunClaim:
    """Context manager: `folder` checked, created, marked as a run of `kind` and locked until exit (module doc).
    With `enabled=False` (a torchrun rank other than 0) it only checks."""

    def __init__(self, folder: str | Path, kind: str, flag: str = "--out", enabled: bool = True):
        self.folder, self.kind, self.flag, self.enabled = Path(folder), kind, flag, enabled
        self._fd: int | None = None
        self._created: Path | None = None  # the outermost folder this claim created
        self._before = b""  # the marker's bytes before this claim

    def __enter__(self) -> RunClaim:
        check_run(self.folder, self.kind, self.flag)
        if not self.enabled:
            return self
        missing = [p for p in (self.folder, *self.folder.parents) if not p.exists()]
        out_dir(self.folder, self.flag)  # a folder that cannot be made or written: one line naming it
        self._created = missing[-1] if missing else None
        try:
            self._lock()
        except BaseException:
            self._remove_created()
            raise
        return self

    def _lock(self) -> None:
        path = self.folder / MARKER
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise UserError(f"{self.flag} {self.folder}: cannot write {MARKER} ({err.strerror or err})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                print(f"note: {self.folder}: the file system does not lock files ({err.strerror}); make sure no "
                      f"other process writes this run", file=sys.stderr)
                return
            raise UserError(f"{self.flag} {self.folder}: another flashdistill process ({_holder(path)}) is writing "
                            f"this run; wait for it to end or choose another {self.flag}") from None
        self._fd = fd
        try:  # checked again under the lock: another kind of run may have claimed the folder since the check
            check_run(self.folder, self.kind, self.flag)
        except BaseException:
            self._unlock()
            raise
        self._before = os.pread(fd, 1 << 16, 0)  # put back if this run is refused: a refusal touches nothing
        record = {"kind": self.kind, "format": 1, "pid": os.getpid(), "host": socket.gethostname()}
        self._write(json.dumps(record).encode() + b"\n")

    def _write(self, data: bytes) -> None:
        os.ftruncate(self._fd, 0)  # rewritten in place: a new file (rename) would not be the one locked
        os.pwrite(self._fd, data, 0)

    def _unlock(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor releases the flock
            self._fd = None

    def _remove_created(self) -> None:
        """Remove the folders this claim created, when nothing but the marker was written into them."""
        if self._created is None:
            return
        (self.folder / MARKER).unlink(missing_ok=True)
        for path in (self.folder, *self.folder.parents):
            try:
                path.rmdir()  # fails, and stops the walk, on a folder that is not empty
            except OSError:
                return
            if path == self._created:
                return

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is not None and self._created is not None and \
                    {p.name for p in self.folder.iterdir()} <= {MARKER}:
                self._remove_created()
            elif exc_type is not None and self._fd is not None and self._before:
                self._write(self._before)  # a refused or failed run leaves the marker as it found it
        finally:
            self._unlock()


def claim_run(folder: str | Path, kind: str, flag: str = "--out", enabled: bool = True) -> RunClaim:
    """`with claim_run(out, "distill"):` around everything a run writes into `out` (see RunClaim)."""
    if kind not in KINDS:
        raise ValueError(f"unknown run kind {kind!r}")
    return RunClaim(folder, kind, flag, enabled)
