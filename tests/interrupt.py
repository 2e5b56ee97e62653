"""Run `cdfast ARGS` and SIGKILL it at the N-th call of one function: the kill points of the
interruption tests (tests/test_reliability.py).

    python tests/interrupt.py os:fsync 7 segment in.jsonl -o out.jsonl

The process dies just before that call runs, as a power cut or the OOM killer would stop it:
no cleanup, no exception handlers, no atexit.
"""

import importlib
import os
import signal
import sys


def kill_at(target: str, count: int) -> None:
    module_name, _, attribute = target.partition(":")
    owner = importlib.import_module(module_name)
    *path, name = attribute.split(".")
    for part in path:
        owner = getattr(owner, part)
    original = getattr(owner, name)
    calls = 0

    def wrapper(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == count:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)

    setattr(owner, name, wrapper)


if __name__ == "__main__":
    kill_at(sys.argv[1], int(sys.argv[2]))
    from cd_fast.cli import main

    sys.exit(main(sys.argv[3:]))
