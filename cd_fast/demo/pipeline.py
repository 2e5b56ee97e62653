"""`cdfast demo`: the whole pipeline on an embedded default, end to end, with the real stages.

data (generated, or --traces) -> tokenizer (BPE trained here) -> student trained on the
original traces, which also serves as the scorer -> score -> compress at each budget: token
pruning, step pruning (value flow, and by step roles), truncation to the step-pruned lengths
(rewrite with --rewriter) -> a student per compressed set, from the same init -> eval of every
student -> the paper-style table, relative to the original, and plots.

A stop signal (SIGTERM, Ctrl-C) ends the demo after the current training step's checkpoint, or
after the current stage elsewhere (`DemoStopped`); `resume=True` (`--resume`) continues it:
finished stages are kept (each records itself when done), an interrupted training resumes
from its checkpoint, an interrupted eval from its predictions. Without it a rerun into the
same folder starts over.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cd_fast.data import Trace, TraceReader, write_jsonl
from cd_fast.formats import DEFAULT_TARGET_TEMPLATE, render_target
from cd_fast.runs import RunFolder, run_manifest
from cd_fast.runtime import StopSignals

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
    "tiny": DemoSize(3000, 300, 128, 3, 4, 3, 2048, 3e-3, 384),  # 2 CPU cores
    "small": DemoSize(8000, 500, 256, 4, 4, 4, 16384, 2e-3, 448),  # a GPU
    "base": DemoSize(30000, 1000, 512, 8, 8, 4, 32768, 1e-3, 448),  # a GPU
}
BUDGETS = (0.3, 0.5)
# Step pruning's criterion: value flow kept the backbone best on these traces (see README).
STEP_CRITERION = "value-flow"
MAX_SEQ_LENGTH = 1024
SETS_FILE = "sets.json"  # the compressed sets' summaries, written once they are all done


class DemoStopped(Exception):
    """A stop signal ended the demo at a safe point; `--resume` continues it."""

    def __init__(self, signum: int, where: str):
        super().__init__(f"stopped by signal {signum} {where}")
        self.signum = signum


class DemoRun(RunFolder):
    """The demo's folder: run.json (the manifest: traces, size, budgets, rewriter, seed), .lock,
    and a folder per stage, each recording itself when done. Without --resume a run starts
    over in it; with --resume under other settings it is refused."""

    def work(self) -> str | None:
        return "a demo run" if self.manifest_file.is_file() else None

    def check(self) -> None:
        if self.resume:
            super().check()


def _stop_point(stop: StopSignals, where: str) -> None:
    """Between stages: end the demo here if a stop signal came during the last one."""
    if stop.received:
        raise DemoStopped(stop.received, where)


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


def _sample_lengths(tokenizer: Any, traces: list[Trace]) -> np.ndarray:
    """Each trace's training-sample length in tokens, as the trainer will cut it."""
    from cd_fast.train.data import tokenize_traces

    every = tokenize_traces(traces, tokenizer, DEFAULT_TARGET_TEMPLATE, max_seq_length=1 << 30)
    return np.minimum(every.lengths, MAX_SEQ_LENGTH)


def _train(
    name: str,
    init: Path,
    traces: list[Trace],
    size: DemoSize,
    out: Path,
    device: str,
    tokens_per_step: int,
    resume: bool,
) -> dict[str, Any]:
    """Train (or, resuming, continue or reuse) the student on one set; its row of the table."""
    from cd_fast.train import TrainConfig, Trainer

    folder = out / f"train-{name}"
    done, partial = folder / "demo-row.json", folder / "demo-partial.json"
    if resume and done.is_file():
        return json.loads(done.read_text())
    spent = json.loads(partial.read_text())["train_seconds"] if resume and partial.is_file() else 0
    config = TrainConfig(
        output_dir=str(folder),
        overwrite_output_dir=not resume,  # a demo rerun into the same folder starts over
        resume=resume,
        learning_rate=size.learning_rate,
        num_train_epochs=size.epochs,
        warmup_ratio=0.05,
        max_tokens_per_step=tokens_per_step,
        max_seq_length=min(MAX_SEQ_LENGTH, tokens_per_step),
        logging_steps=10,
        save_steps=0,  # a checkpoint only when a stop signal comes
        export="merged",
        device=device,
        seed=0,
    )
    print(f"\n== training the student on {name} traces", flush=True)
    trainer = Trainer(str(init), traces, config)
    tic = time.perf_counter()
    result = trainer.train()
    spent += time.perf_counter() - tic
    if result.interrupted:
        partial.write_text(json.dumps({"train_seconds": spent}))
        where = f"while training the student on {name} (checkpoint at step {result.step})"
        raise DemoStopped(result.stopped_by, where)
    row = {
        "model": str(result.export_path),
        "train_label_tokens": trainer.train_set.label_tokens,
        "train_seconds": round(spent, 2),
        "train_steps": result.step,
        "tokens_per_step": tokens_per_step,
        "final_loss": round(result.losses[max(result.losses)], 4) if result.losses else None,
    }
    done.write_text(json.dumps(row))
    partial.unlink(missing_ok=True)
    return row


def _compress(
    traces: list[Trace],
    model_dir: str,
    budgets: tuple[float, ...],
    rewriter: str | None,
    out: Path,
    device: str,
) -> dict[str, dict[str, Any]]:
    """Every compressed set, by run name: its records, summary, method and asked budget."""
    from cd_fast.compress import compress
    from cd_fast.models import load_causal_lm
    from cd_fast.score import Scorer

    model, tokenizer = load_causal_lm(model_dir, device=device)
    scorer = Scorer(model, tokenizer)
    print("\n== scoring the original traces with the trained student", flush=True)
    scores = {record.id: record for record in scorer.score(traces)}
    backend = None
    if rewriter:
        from cd_fast.generate import make_generator

        backend = make_generator(rewriter, device=device)
    sets = {}
    for budget in budgets:
        common = {"scorer": scorer, "scores": scores, "explain": True}
        token = compress(traces, "token", budget, criterion="surprisal", **common)
        step = compress(traces, "step", budget, criterion=STEP_CRITERION, **common)
        step_role = compress(traces, "step", budget, criterion="role", **common)
        lengths = {r.id: r.meta["compression"]["tokens"] for r in step.records}
        truncate = compress(traces, "truncate", budget, match_lengths=lengths, **common)
        found = {"token": token, "step": step, "step-role": step_role, "truncate": truncate}
        if backend is not None:
            print(f"\n== rewriting with {rewriter} at budget {budget}", flush=True)
            found["rewrite"] = compress(
                traces, "rewrite", budget, counter=tokenizer, rewriter=backend
            )
        for method, result in found.items():
            name = f"{method}@{budget:g}"
            sets[name] = {
                "records": result.records,
                "summary": result.summary,
                "method": method,
                "budget": budget,
            }
            write_jsonl(out / "data" / f"{name}.jsonl", result.records)
            summary = result.summary
            print(
                f"{name}: asked {summary['ratio_asked']:.3f}, reached "
                f"{summary['ratio_tokens']:.3f}, answers kept "
                f"{summary['answers_kept']}/{summary['answers_in_original']}"
            )
    described = {
        name: {k: v for k, v in found.items() if k != "records"} for name, found in sets.items()
    }
    (out / "data" / SETS_FILE).write_text(json.dumps(described, indent=1))
    return sets


def _saved_sets(out: Path) -> dict[str, dict[str, Any]] | None:
    """The compressed sets a stopped run finished (data/sets.json, written last), or None."""
    path = out / "data" / SETS_FILE
    if not path.is_file():
        return None
    sets = json.loads(path.read_text())
    for name, found in sets.items():
        found["records"] = list(TraceReader(out / "data" / f"{name}.jsonl"))
    return sets


def _split_user_traces(path: Path, size: DemoSize) -> tuple[list[Trace], list[Trace]]:
    every = list(TraceReader(path))
    graded = [t for t in every if t.gold]
    if len(graded) < 2:
        raise ValueError(f"{path}: the demo needs records with a gold answer to evaluate on")
    held = max(1, min(size.eval, len(graded) // 5))
    evaluation = graded[-held:]
    held_ids = {t.id for t in evaluation}
    return [t for t in every if t.id not in held_ids], evaluation


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
    """Run the pipeline into `out`; returns the results (also in out/demo.json). A stop signal
    raises DemoStopped at the next safe point; `resume` continues a stopped run."""
    if size_name not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size_name!r}")
    options = {"size": size_name, "budgets": list(budgets), "rewriter": rewriter, "seed": seed}
    manifest = run_manifest("demo", {"traces": traces}, options)
    with DemoRun(out, manifest, resume) as run, StopSignals() as stop:
        run.start()
        return _run_stages(out, size_name, traces, budgets, rewriter, device, seed, stop, resume)


def _run_stages(
    out: Path,
    size_name: str,
    traces: Path | None,
    budgets: tuple[float, ...],
    rewriter: str | None,
    device: str | None,
    seed: int,
    stop: StopSignals,
    resume: bool,
) -> dict[str, Any]:
    from cd_fast.demo.data import make_dataset
    from cd_fast.demo.report import write_report
    from cd_fast.demo.tokenizer import train_tokenizer
    from cd_fast.eval import EvalConfig, evaluate

    size = SIZES[size_name]
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    started = time.perf_counter()
    if traces is None:
        every = make_dataset(size.train + size.eval, seed)
        train, evaluation = every[: size.train], every[size.train :]
    else:
        train, evaluation = _split_user_traces(traces, size)
    write_jsonl(out / "data" / "original.jsonl", train)
    write_jsonl(out / "data" / "eval.jsonl", evaluation)
    print(
        f"== data: {len(train)} training traces, {len(evaluation)} held-out questions", flush=True
    )
    if resume and (out / "tokenizer" / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(out / "tokenizer")
    else:
        corpus = [
            f"{t.question}\n{render_target(DEFAULT_TARGET_TEMPLATE, t.trace, t.answer)}"
            for t in train
        ]
        tokenizer = train_tokenizer(corpus, out / "tokenizer")
    init = _student_init(tokenizer, size, out / "student-init", resume)

    def train_on(name: str, records: list[Trace], tokens_per_step: int) -> dict[str, Any]:
        _stop_point(stop, f"before training the student on {name}")
        return _train(name, init, records, size, out, device, tokens_per_step, resume)

    rows: dict[str, dict[str, Any]] = {
        "original": {
            "method": "original",
            "budget": 1.0,
            **train_on("original", train, size.tokens_per_step),
        }
    }
    _stop_point(stop, "before compressing")
    sets = (resume and _saved_sets(out)) or _compress(
        train, rows["original"]["model"], budgets, rewriter, out, device
    )
    original_tokens = _sample_lengths(tokenizer, train).sum()
    for name, found in sets.items():
        # The same traces per step and the same number of steps as the original run: only the
        # traces' content differs, and each step costs what its shorter traces cost. A step
        # always holds the set's longest sample, so no sample is cut shorter than the original's.
        lengths = _sample_lengths(tokenizer, found["records"])
        tokens_per_step = max(size.tokens_per_step * lengths.sum() / original_tokens, lengths.max())
        rows[name] = {
            "method": found["method"],
            "budget": found["budget"],
            **train_on(name, found["records"], int(tokens_per_step)),
            "ratio_tokens": found["summary"]["ratio_tokens"],
        }
    rows["original"]["ratio_tokens"] = 1.0

    for name, row in rows.items():
        _stop_point(stop, f"before evaluating the student trained on {name}")
        print(f"\n== evaluating the student trained on {name}", flush=True)
        baseline = out / "eval-original" if name != "original" else None
        student = EvalConfig(
            model=row["model"], max_new_tokens=size.max_new_tokens, batch_size=64, device=device
        )
        if not resume:
            shutil.rmtree(out / f"eval-{name}", ignore_errors=True)  # a rerun starts over
        metrics = evaluate(
            evaluation, out / f"eval-{name}", student, resume=resume, baseline=baseline
        )
        keys = ("accuracy", "mean_output_tokens", "accuracy_per_1k_tokens", "truncation_rate")
        row.update({k: metrics[k] for k in keys})
    results = {
        "size": size_name,
        "budgets": list(budgets),
        "device": device,
        "train_records": len(train),
        "eval_records": len(evaluation),
        "seconds": round(time.perf_counter() - started, 1),
        "runs": rows,
    }
    (out / "demo.json").write_text(json.dumps(results, indent=1))
    table = write_report([out], out / "report.md")
    print("\n" + table)
    print(f"\nreport: {out / 'report.md'} (plots beside it); total {results['seconds']} s")
    return results
