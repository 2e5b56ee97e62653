"""A real OpenAI-compatible server on loopback: `transformers serve` with a local model folder,
for the HTTP generation backend's tests and benchmark."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def transformers_serve(
    model_dir: str | Path,
    log: str | Path,
    *extra: str,
    port: int | None = None,
    wait_s: float = 180.0,
) -> Iterator[str]:
    """`transformers serve` on the CPU at 127.0.0.1 (a free port unless given): yields the base
    URL (…/v1) once /health answers; `extra` flags go to the server (e.g.
    --continuous-batching). Its output goes to `log`; the server stops on exit."""
    port = port or free_port()
    command = [
        sys.executable,
        "-m",
        "transformers.cli.transformers",
        "serve",
        str(model_dir),
        "--device",
        "cpu",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *extra,
    ]
    url = f"http://127.0.0.1:{port}"
    with open(log, "w") as output:
        server = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + wait_s
            while True:
                try:
                    urllib.request.urlopen(url + "/health", timeout=1)
                    break
                except OSError:
                    if server.poll() is not None:
                        tail = Path(log).read_text(errors="replace")[-2000:]
                        raise RuntimeError(f"transformers serve exited: {tail}") from None
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"transformers serve did not come up in {wait_s:.0f} s"
                        ) from None
                    time.sleep(0.5)
            yield url + "/v1"
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
