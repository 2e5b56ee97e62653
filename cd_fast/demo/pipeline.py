"""`cdfast demo`: the whole pipeline on an embedded default, end to end, with the real stages.

data (generated: a math task and a general one; or --traces) -> tokenizer (BPE trained here)
-> a small sweep (cd_fast.sweep): the student trained on the original traces, which also
serves as the scorer -> score -> compress at each budget: token pruning (surprisal), step
pruning (value flow, and by step roles), truncation (rewrite with --rewriter) -> a student per
compressed set, from the same init -> eval of every student -> the paper-style tables per
domain, relative to the original, and plots.

A stop signal (SIGTERM, Ctrl-C) ends the demo after the current training step's checkpoint, or
after the current stage elsewhere (`SweepStopped`); `resume=True` (`--resume`) continues it:
finished cells are kept, an interrupted training resumes from its checkpoint, an interrupted
eval from its predictions. Without it a rerun into the same folder starts over.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cd_fast.data import Trace, TraceReader
from cd_fast.demo.data import make_dataset
from cd_fast.demo.tokenizer import train_tokenizer
from cd_fast.formats import DEFAULT_TARGET_TEMPLATE, render_target
from cd_fast.runs import RunFolder, run_manifest
from cd_fast.runtime import StopSignals
from cd_fast.sweep import Sweep, SweepConfig, write_report
from cd_fast.sweep.run import split_holdout

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoSize:
    train: int
    """Training problems."""
    eval: int
    """Held-out problems the students answer."""
    hidden: int
    layers: int
    heads: int
    epochs: float
    tokens_per_step: int
    """The original run's; a compressed run's is scaled by its share of the tokens, so every
    run takes the same steps over the same traces per step."""
    learning_rate: float
    max_new_tokens: int


SIZES = {
    "micro": DemoSize(240, 16, 48, 1, 2, 1, 4096, 3e-3, 128),  # the pipeline's smoke test (CI)
    "tiny": DemoSize(8000, 300, 128, 3, 4, 1, 768, 5e-3, 384),  # 2 CPU cores
    "small": DemoSize(8000, 500, 256, 4, 4, 4, 16384, 2e-3, 448),  # a GPU
    "base": DemoSize(30000, 1000, 512, 8, 8, 4, 32768, 1e-3, 448),  # a GPU
}
BUDGETS = (0.3, 0.5)
# Token pruning by surprisal; step pruning by value flow (it kept the backbone best on these
# traces, see README). The agreement table also compares step roles and surprisal.
CRITERIA = ("token:surprisal", "step:value-flow")
AGREEMENT = ("value-flow", "role", "surprisal")
MAX_SEQ_LENGTH = 1024
# Adam's second moment over ~20 steps, not ~1000: with 0.999 the tiny student missed copying
# an amount from the question on some seeds (README, "the generated world").
TRAIN_OPTIONS = {"adam_beta2": 0.95}


class DemoRun(RunFolder):
    """The demo's folder: run.json (the manifest: traces, size, budgets, rewriter, seed), .lock,
    and a folder per stage, each recording itself when done. Without --resume a run starts
    over in it; with --resume under other settings it is refused."""

    def work(self) -> str | None:
        return "a demo run" if self.manifest_file.is_file() else None

    def check(self) -> None:
        if self.resume:
            super().check()


def _student_init(tokenizer: Any, size: DemoSize, out: Path, resume: bool) -> Path:
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=size.hidden,
        intermediate_size=3 * size.hidden,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=max(1, size.heads // 2),
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if resume and (out / "config.json").is_file():
        return out  # the same initial weights as the runs already trained from it
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def run_demo(
    out: Path,
    size_name: str = "tiny",
    traces: Path | None = None,
    budgets: tuple[float, ...] = BUDGETS,
    rewriter: str | None = None,
    device: str | None = None,
    seed: int = 0,
    resume: bool = False,
) -> dict[str, Any]:
    """Run the pipeline into `out`; returns the results (also in out/sweep.json). A stop signal
    raises SweepStopped at the next safe point; `resume` continues a stopped run."""
    if size_name not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size_name!r}")
    options = {"size": size_name, "budgets": list(budgets), "rewriter": rewriter, "seed": seed}
    manifest = run_manifest("demo", {"traces": traces}, options)
    with DemoRun(out, manifest, resume) as run, StopSignals() as stop:
        run.start()
        size = SIZES[size_name]
        if traces is None:
            every = make_dataset(size.train + size.eval, seed)
            train, evaluation = every[: size.train], every[size.train :]
        else:
            train, evaluation = split_holdout(list(TraceReader(traces)), size.eval, traces)
        init = _student_init(_tokenizer(train, out, resume), size, out / "student-init", resume)
        config = SweepConfig(
            student=str(init),
            methods=["token", "step", *(["rewrite"] if rewriter else [])],
            criteria=list(CRITERIA),
            agreement_criteria=list(AGREEMENT),
            budgets=list(budgets),
            rewriter=rewriter,
            explain=True,
            learning_rate=size.learning_rate,
            epochs=size.epochs,
            tokens_per_step=size.tokens_per_step,
            max_seq_length=MAX_SEQ_LENGTH,
            seed=0,
            device=device,
            max_new_tokens=size.max_new_tokens,
            eval_batch_size=64,
        )
        sweep = Sweep(out, config, train, evaluation, stop, resume, train_options=TRAIN_OPTIONS)
        results = sweep.run({"size": size_name})
    table = write_report([out], out / "report.md")
    print("\n" + table)
    print(f"\nreport: {out / 'report.md'} (plots beside it); total {results['seconds']} s")
    return results


def _tokenizer(train: list[Trace], out: Path, resume: bool) -> Any:
    """The BPE tokenizer trained on the training traces (kept in out/tokenizer)."""
    if resume and (out / "tokenizer" / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(out / "tokenizer")
    corpus = [
        f"{t.question}\n{render_target(DEFAULT_TARGET_TEMPLATE, t.trace, t.answer)}" for t in train
    ]
    return train_tokenizer(corpus, out / "tokenizer")
