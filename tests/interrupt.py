"""Run `cdfast ARGS` and SIGKILL it at the N-th call of one function: the kill points of the
interruption tests (tests/test_reliability.py).

    python tests/interrupt.py os:fsync 7 segment in.jsonl -o out.jsonl
    python tests/interrupt.py cd_fast.train.optim:Optimization.update 3:TERM demo ...

The process dies just before that call runs, as a power cut or the OOM killer would stop it:
no cleanup, no exception handlers, no atexit. With N:TERM or N:INT it gets that signal instead
(what `kill` or Ctrl-C sends), and the call goes on.
"""

import importlib
import os
import signal
import sys


def kill_at(target: str, count: int, signum: int = signal.SIGKILL) -> None:
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
            os.kill(os.getpid(), signum)
        return original(*args, **kwargs)

    setattr(owner, name, wrapper)


if __name__ == "__main__":
    count, _, name = sys.argv[2].partition(":")
    kill_at(sys.argv[1], int(count), getattr(signal, f"SIG{name or 'KILL'}"))
    from cd_fast.cli import main

    sys.exit(main(sys.argv[3:]))
