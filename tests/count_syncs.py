"""Run `cdfast ARGS` and count the host syncs of each training step: the ops that make the host
wait for the device (a scalar read, a data-dependent shape, a comparison answered on the host).

    python tests/count_syncs.py OUT.json train in.jsonl -o run --nan-policy skip ...
    python -m torch.distributed.run --nproc-per-node 2 tests/count_syncs.py OUT.json train ...

OUT.json (OUT.rankN.json under torchrun) gets {"steps": {step: {op: count}}, "windows": {...}}:
what `Trainer._train_step` dispatched, and what the logging windows' closing did (where the
loop is meant to sync), counted with a TorchDispatchMode and patched Tensor.item / tolist. On a
CPU the counts are what a GPU run would wait on.
"""

import collections
import json
import os
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
SYNC_OPS = {
    aten._local_scalar_dense,
    aten.equal,
    aten.is_nonzero,
    aten.nonzero,
    aten.masked_select,
    aten.unique_consecutive,
    aten._unique2,
}


class HostSyncs(TorchDispatchMode):
    """Counts the sync ops dispatched while active, by name (boolean-mask indexing counts as
    `index[bool]`), and the calls of Tensor.item and Tensor.tolist (tolist reads without
    dispatching an op)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()
        self._saved: dict = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        packet = func.overloadpacket
        if packet in SYNC_OPS:
            self.counts[packet.__name__] += 1
        elif packet is aten.index and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1]
        ):
            self.counts["index[bool]"] += 1
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        for name in ("item", "tolist"):
            original = self._saved[name] = getattr(torch.Tensor, name)

            def read(tensor, *args, _original=original, _name=name, **kwargs):
                self.counts[f"Tensor.{_name}"] += 1
                return _original(tensor, *args, **kwargs)

            setattr(torch.Tensor, name, read)
        return super().__enter__()

    def __exit__(self, *exc):
        for name, original in self._saved.items():
            setattr(torch.Tensor, name, original)
        return super().__exit__(*exc)


def count_during(owner: type, name: str, into: dict) -> None:
    """Count the syncs of each call of `owner.name`, keyed by the trainer's step after it."""
    original = getattr(owner, name)

    def counted(self, *args, **kwargs):
        mode = HostSyncs()
        with mode:
            out = original(self, *args, **kwargs)
        into[self.step] = dict(mode.counts)
        return out

    setattr(owner, name, counted)


if __name__ == "__main__":
    from cd_fast.cli import main
    from cd_fast.train.trainer import Trainer

    steps: dict = {}
    windows: dict = {}
    count_during(Trainer, "_train_step", steps)
    count_during(Trainer, "_close_window", windows)
    code = main(sys.argv[2:])
    out = sys.argv[1]
    if "RANK" in os.environ:
        out = out.removesuffix(".json") + f".rank{os.environ['RANK']}.json"
    with open(out, "w") as handle:
        json.dump({"steps": steps, "windows": windows}, handle)
    sys.exit(code)
