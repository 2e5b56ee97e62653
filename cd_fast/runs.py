"""What makes an output a run, and the protocol every resumable command (compress, score, eval,
train) follows on it: the manifest (the inputs' fingerprints, the options, the code version)
checked on --resume, the lock that keeps a second writer out, and `RunFolder`, which holds them
together:

    with ScoreRun(folder, manifest, resume) as run:   # the lock, then the refusals
        model = load(...)                             # may fail: nothing is left behind
        run.start()                                   # the manifest: the run has begun
        ...                                           # finished work is committed as it goes
"""

from __future__ import annotations

import abc
import errno
import fcntl
import hashlib
import json
import os
from pathlib import Path
from typing import Any, ClassVar

from cd_fast._version import __version__
from cd_fast.data import AtomicWriter, ReadConfig

_WHOLE_FILE_BYTES = 64 << 20  # inputs up to this size are hashed whole, larger ones head + tail
_SAMPLE_BYTES = 8 << 20


def input_fingerprint(path: str | Path) -> dict[str, Any]:
    """The input's size and a SHA-256 of its content (whole, or first and last 8 MiB of a file
    over 64 MiB): a moved file is the same input, an edited one is not."""
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        if size <= _WHOLE_FILE_BYTES:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        else:
            digest.update(handle.read(_SAMPLE_BYTES))
            handle.seek(size - _SAMPLE_BYTES)
            digest.update(handle.read(_SAMPLE_BYTES))
    return {"path": str(path), "bytes": size, "sha256": digest.hexdigest()}


def run_manifest(
    command: str, inputs: dict[str, str | Path | None], options: dict[str, Any]
) -> dict[str, Any]:
    """A run's identity: the fingerprint of every input file named, the options, the version."""
    return {
        "command": command,
        "cd_fast": __version__,
        "inputs": {
            name: input_fingerprint(path) if path is not None else None
            for name, path in inputs.items()
        },
        "options": options,
    }


def job_manifest(
    command: str,
    read: ReadConfig,
    source: Any,
    options: dict[str, Any],
    inputs: dict[str, str | Path | None] | None = None,
    name: str = "input",
) -> dict[str, Any]:
    """The manifest of `command` reading `source` with `read`: the files it reads (the source
    when it is a file, the prompts, `inputs`), the reading options and the command's `options`.
    The CLI and the Python API build it alike."""
    files = {**read.inputs(source, name), **(inputs or {})}
    return run_manifest(command, files, {**read.result_options(), **options})


def manifest_changes(
    saved: dict[str, Any], current: dict[str, Any], skip_inputs: tuple[str, ...] = ()
) -> list[str]:
    """What differs between two manifests, one phrase per setting ("budget 0.4 -> 0.8");
    `skip_inputs` names inputs the caller checks itself."""
    current = json.loads(json.dumps(current, default=str))  # compare as saved: lists, not tuples
    changes = []
    if saved.get("cd_fast") != current.get("cd_fast"):
        changes.append(f"cd_fast version {saved.get('cd_fast')} -> {current.get('cd_fast')}")
    saved_inputs, inputs = saved.get("inputs", {}), current.get("inputs", {})
    for name in sorted((set(saved_inputs) | set(inputs)) - set(skip_inputs)):
        old, new = saved_inputs.get(name), inputs.get(name)
        same = (old is None) == (new is None) and (
            old is None or (old["bytes"], old["sha256"]) == (new["bytes"], new["sha256"])
        )
        if not same:
            shown = [x["path"] if x else "none" for x in (old, new)]
            what = "another file" if shown[0] != shown[1] else "its content changed"
            changes.append(f"{name} {shown[0]} -> {shown[1]} ({what})")
    saved_options, options = saved.get("options", {}), current.get("options", {})
    for key in sorted(set(saved_options) | set(options)):
        if saved_options.get(key) != options.get(key):
            changes.append(f"{key} {saved_options.get(key)!r} -> {options.get(key)!r}")
    return changes


def check_same_run(
    saved: dict[str, Any],
    current: dict[str, Any],
    where: Path | str,
    skip_inputs: tuple[str, ...] = (),
) -> None:
    """Refuse to continue a run under other settings, naming each one that changed."""
    changes = manifest_changes(saved, current, skip_inputs)
    if changes:
        raise ValueError(
            f"{where}: --resume continues a run started with other settings ({'; '.join(changes)})"
            ": rerun with the original settings, or write to a new output"
        )


class RunLock:
    """An exclusive lock on `path` for as long as a run writes its output. The kernel drops it
    when the process dies, so a killed run never leaves a stale lock; the file is removed on a
    clean exit."""

    def __init__(self, path: str | Path, what: str):
        self.path = Path(path)
        self.what = what
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                os.close(fd)
                if error.errno in (errno.EWOULDBLOCK, errno.EACCES):
                    raise ValueError(
                        f"{self.what} is being written by another cdfast run (pid {holder}, "
                        f"lock {self.path}): wait for it to finish, or write elsewhere"
                    ) from None
                raise
            # the holder before us may have removed the file after we opened it: lock the
            # file that is at the path now
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *_: object) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None


class RunFolder(abc.ABC):
    """One run's output, from the lock to the manifest (see the module doc).

    Entering takes the lock (a second writer is refused), then refuses: an output holding a
    run's finished work without --resume, an output an older cd_fast wrote, and a --resume under
    other settings (naming each one). `start()` records a new run's manifest once the run has
    started (its models loaded). Leaving on an error while the output holds no finished work
    removes what the run created: its manifest, its scratch files and the folders it made, so a
    failed start leaves the output as it was.

    Subclasses say what their command keeps: `work()` (the finished work the output holds),
    `refusal()`, `scratch()`; and where, when it is not a folder holding .lock and `MANIFEST`:
    `lock_file`, `manifest_file`, `saved_manifest()`, `write_manifest()`.
    """

    skip_inputs: ClassVar[tuple[str, ...]] = ()  # inputs the command checks itself on --resume

    def __init__(self, output: str | Path, manifest: dict[str, Any], resume: bool):
        self.output = Path(output)
        self.manifest = manifest
        self.resume = resume
        self.saved: dict[str, Any] | None = None  # the manifest of the run continued, if any
        self._lock: RunLock | None = None
        self._made: list[Path] = []
        self._wrote_manifest = False

    # ---- where a command keeps things (a folder's: .lock and MANIFEST in it) ----

    MANIFEST: ClassVar[str] = "run.json"

    @property
    def lock_file(self) -> Path:
        return self.output / ".lock"

    @property
    def manifest_file(self) -> Path:
        return self.output / self.MANIFEST

    @abc.abstractmethod
    def work(self) -> str | None:
        """The finished work the output holds, in a few words; None when there is none worth
        keeping (a new run starts over whatever is left)."""

    def refusal(self, work: str) -> str:
        return (
            f"{self.output} holds {work}: pass --resume to continue that run, or choose a new "
            "output"
        )

    def scratch(self) -> list[Path]:
        """Files a run writes before it finishes anything (removed when it fails)."""
        return []

    def saved_manifest(self) -> dict[str, Any] | None:
        if not self.manifest_file.is_file():
            return None
        return json.loads(self.manifest_file.read_text(encoding="utf-8"))

    def write_manifest(self) -> None:
        with AtomicWriter(self.manifest_file) as handle:
            json.dump(self.manifest, handle, indent=1, default=str)

    # ---- the protocol ----

    def check(self) -> None:
        """The refusals (also callable without the lock, to refuse before loading models)."""
        work = self.work()
        if work is None:
            return
        if not self.resume:
            raise ValueError(self.refusal(work))
        saved = self.saved_manifest()
        if not saved or "options" not in saved:
            raise ValueError(
                f"{self.output}: written by an older cd_fast (no run manifest): write to a new "
                "output"
            )
        check_same_run(saved, self.manifest, self.manifest_file, self.skip_inputs)
        self.saved = saved

    def start(self) -> None:
        """The run has started: a new run records its manifest."""
        if self.saved is None:
            self.write_manifest()
            self._wrote_manifest = True

    def __enter__(self) -> RunFolder:
        folder = self.lock_file.parent
        self._made = [p for p in (folder, *folder.parents) if not p.exists()]
        self._lock = RunLock(self.lock_file, str(self.output))
        self._lock.__enter__()
        try:
            self.check()
        except BaseException:
            self._leave(failed=True)
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self._leave(failed=exc_type is not None)

    def _leave(self, failed: bool) -> None:
        try:
            if failed and self.saved is None and self.work() is None:
                for path in self.scratch():
                    path.unlink(missing_ok=True)
                if self._wrote_manifest:
                    self.manifest_file.unlink(missing_ok=True)
        finally:
            if self._lock is not None:
                self._lock.__exit__(None, None, None)
                self._lock = None
            for made in self._made if failed else ():
                try:
                    made.rmdir()  # only when empty: what a failed start made
                except OSError:
                    break
