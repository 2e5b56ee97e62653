"""What makes an output folder a run: its manifest (the input's fingerprint, the options, the
code version) checked on --resume, and the lock that keeps a second writer out.

    manifest = run_manifest("compress", input_path, config.to_dict())
    check_same_run(saved, manifest, where=state_file)   # names every setting that changed
    with RunLock(output.with_name(output.name + ".lock")):
        ...
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
from pathlib import Path
from types import TracebackType
from typing import Any

from cd_fast import __version__

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

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None
