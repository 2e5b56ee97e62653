"""The sweep's pipeline: one baseline cell on the original traces, the scorer's token scores
computed once, then each cell of the grid in turn: its compressed set (built once, cached), a
student trained on it from the same initial weights with the same steps, its evaluation on the
held-out set. A cell is finished when its row (cells/NAME.json) is written; a stopped or killed
sweep continued with --resume skips finished cells and picks up the unfinished one where it was
(the compressed set if built, training from its checkpoint, eval from its predictions).

Folder (OUT):
  run.json, .lock          the run's manifest (the shared settings) and lock
  data/original.jsonl      the training traces; data/eval.jsonl the held-out questions
  scores/                  the scorer's token scores (a `cdfast score` folder), when needed
  data/CELL.jsonl          each compressed set; data/CELL.summary.json its compress summary
  train-CELL/ eval-CELL/   the student (final/ its weights) and its `cdfast eval` run
  cells/CELL.json          the cell's row: written last
  sweep.json               every row, the criterion agreement, the timings
  report.md, agreement.md and the plots (cd_fast.sweep.report)
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from cd_fast.data import AtomicWriter, Trace, TraceReader, write_jsonl
from cd_fast.eval.grade import gradable
from cd_fast.eval.run import record_domain
from cd_fast.formats import DEFAULT_TARGET_TEMPLATE
from cd_fast.generate import BackendConfig
from cd_fast.runs import RunFolder, job_manifest
from cd_fast.runtime import StopSignals, choose_device
from cd_fast.sweep.config import ORIGINAL, Cell, SweepConfig, default_granularity, grid_cells
from cd_fast.sweep.report import RESULTS, write_report

logger = logging.getLogger(__name__)

NO_DOMAIN = "all"
AGREEMENT_TRACES = 1000  # the agreement is a mean over traces: a thousand hold it to ~0.01


class SweepStopped(Exception):
    """A stop signal ended the sweep at a safe point; --resume continues it."""

    def __init__(self, signum: int, where: str):
        super().__init__(f"stopped by signal {signum} {where}")
        self.signum = signum


class SweepRun(RunFolder):
    """The sweep's folder: its manifest holds the settings every cell shares; the grid itself
    may grow on --resume (new cells run, finished ones are kept)."""

    def work(self) -> str | None:
        return "a sweep" if self.manifest_file.is_file() else None


def stop_point(stop: StopSignals, where: str) -> None:
    """Between stages: end the sweep here if a stop signal came during the last one."""
    if stop.received:
        raise SweepStopped(stop.received, where)


def split_holdout(every: list[Trace], count: int, source: Path) -> tuple[list[Trace], list[Trace]]:
    """The last `count` gradable records (at most a fifth) held out for evaluation, the rest
    to train on."""
    graded = [t for t in every if gradable(t)]
    if len(graded) < 2:
        raise ValueError(f"{source}: a sweep needs records with a gold answer to evaluate on")
    held = graded[-max(1, min(count, len(graded) // 5)) :]
    held_ids = {t.id for t in held}
    return [t for t in every if t.id not in held_ids], held


def keep_domains(records: list[Trace], domains: list[str], what: str) -> list[Trace]:
    if not domains:
        return records
    kept = [r for r in records if record_domain(r) in domains]
    if not kept:
        found = sorted({str(record_domain(r)) for r in records})
        raise ValueError(f"no {what} record in the domains {domains} (meta.domain: {found})")
    return kept


def sample_tokens(tokenizer: Any, traces: list[Trace], max_seq_length: int) -> np.ndarray:
    """Each trace's training sample, as the trainer cuts it: [n, 2] of (all tokens, label
    tokens)."""
    from cd_fast.train.data import tokenize_traces

    every = tokenize_traces(traces, tokenizer, DEFAULT_TARGET_TEMPLATE, max_seq_length=1 << 30)
    lengths = np.minimum(every.lengths, max_seq_length)
    labels = np.maximum(lengths - np.maximum(every.prompt_lengths, 1), 0)  # label_token_count's
    return np.stack([lengths, labels], axis=1)


def tokens_by_domain(traces: list[Trace], labels: np.ndarray) -> dict[str, int]:
    """Label tokens per domain."""
    found: dict[str, int] = defaultdict(int)
    for trace, count in zip(traces, labels, strict=True):
        found[record_domain(trace) or NO_DOMAIN] += int(count)
    return dict(found)


class Sweep:
    """The stages of one sweep into `out` (see the module doc); `resume` False starts over."""

    def __init__(
        self,
        out: Path,
        config: SweepConfig,
        train: list[Trace],
        evaluation: list[Trace],
        stop: StopSignals,
        resume: bool,
        backend: BackendConfig | None = None,
        train_options: dict[str, Any] | None = None,
    ):
        from cd_fast.models import load_tokenizer

        self.out, self.config, self.stop, self.resume = out, config, stop, resume
        self.train, self.evaluation = train, evaluation
        self.backend = backend or BackendConfig()
        self.train_options = train_options or {}
        self.tokenizer = load_tokenizer(config.student)
        self.device = str(choose_device(config.device))
        tokens = sample_tokens(self.tokenizer, train, config.max_seq_length)
        self.original_tokens = int(tokens[:, 0].sum())
        self.domains = sorted({record_domain(t) or NO_DOMAIN for t in train})

    def _cached(self, path: Path) -> bool:
        return self.resume and path.is_file()

    # ---- stages ----

    def run(self, header: dict[str, Any] | None = None) -> dict[str, Any]:
        started = time.perf_counter()
        write_jsonl(self.out / "data" / "original.jsonl", self.train)
        write_jsonl(self.out / "data" / "eval.jsonl", self.evaluation)
        print(
            f"== data: {len(self.train)} training traces, {len(self.evaluation)} held-out "
            "questions",
            flush=True,
        )
        cells = grid_cells(self.config)
        rows = {ORIGINAL: self.cell(None, self.train, {"ratio_tokens": 1.0})}
        scores, scorer = self.scores(cells, rows[ORIGINAL]["model"])
        for cell in cells:
            rows[cell.name] = self.cell(cell, None, None, scores, scorer)
        agreement = self.agreement(cells, scores, scorer)
        results = {
            **(header or {}),
            "config": asdict(self.config),
            "device": self.device,
            "train_records": len(self.train),
            "eval_records": len(self.evaluation),
            "domains": self.domains,
            "seconds": round(time.perf_counter() - started, 1),
            "runs": rows,
            "agreement": agreement,
        }
        with AtomicWriter(self.out / RESULTS) as handle:
            json.dump(results, handle, indent=1)
        return results

    def scores(self, cells: list[Cell], original_model: str) -> tuple[dict | None, Any]:
        """The scorer's token scores of the training traces (computed once, kept in scores/),
        and the scorer itself only when a criterion runs it (answer-delta): otherwise it is let
        go, so it does not hold memory through every cell's training."""
        from cd_fast.compress.criteria import CRITERIA, SCORER, SCORES

        criteria = [*(c.criterion for c in cells if c.criterion), *self.config.agreement_criteria]
        needs = {CRITERIA[c].needs for c in criteria}
        if not needs & {SCORES, SCORER}:
            return None, None
        from cd_fast.models import load_causal_lm
        from cd_fast.score import Scorer
        from cd_fast.score.store import ScoreStore, write_manifest, write_shard

        folder = self.out / "scores"
        model = original_model if self.config.scorer == ORIGINAL else self.config.scorer
        scorer = None
        if not (self.resume and (folder / "manifest.json").is_file()) or SCORER in needs:
            stop_point(self.stop, "before scoring the traces")
            lm, tokenizer = load_causal_lm(model, device=self.device)
            scorer = Scorer(lm, tokenizer)
        if not (self.resume and (folder / "manifest.json").is_file()):
            print(f"\n== scoring the original traces with {model}", flush=True)
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            write_shard(folder, 0, scorer.score(self.train))
            write_manifest(folder, {"model": str(model), "total_shards": 1})
        return ScoreStore(folder).by_id(), scorer if SCORER in needs else None

    def cell(
        self,
        cell: Cell | None,
        records: list[Trace] | None,
        summary: dict[str, Any] | None,
        scores: dict | None = None,
        scorer: Any = None,
    ) -> dict[str, Any]:
        """One cell, finished: its compressed set, student and evaluation (the original cell
        when `cell` is None: the traces as they are)."""
        name = cell.name if cell else ORIGINAL
        done = self.out / "cells" / f"{name}.json"
        if self._cached(done):
            return json.loads(done.read_text())
        if cell is not None:
            records, summary = self.compressed(cell, scores, scorer)
        assert records is not None and summary is not None
        tokens = sample_tokens(self.tokenizer, records, self.config.max_seq_length)
        # The same traces per step and the same steps as the original: a step always holds
        # the set's longest sample, so no sample is cut shorter than the original's.
        tokens_per_step = max(
            self.config.tokens_per_step * tokens[:, 0].sum() / self.original_tokens,
            tokens[:, 0].max(),
        )
        row = {
            "method": cell.method if cell else ORIGINAL,
            "criterion": cell.criterion if cell else None,
            "granularity": cell.granularity if cell else None,
            "level": cell.level if cell else None,
            "budget": cell.budget if cell else 1.0,
            "ratio_tokens": summary["ratio_tokens"],
            "train_tokens_by_domain": tokens_by_domain(records, tokens[:, 1]),
            **self.trained(name, records, int(tokens_per_step)),
        }
        row.update(self.evaluated(name, row["model"]))
        done.parent.mkdir(parents=True, exist_ok=True)
        with AtomicWriter(done) as handle:
            json.dump(row, handle, indent=1)
        return row

    def compressed(
        self, cell: Cell, scores: dict | None, scorer: Any
    ) -> tuple[list[Trace], dict[str, Any]]:
        """The cell's compressed set and its summary: built once, read back on --resume."""
        from cd_fast.compress import compress

        data = self.out / "data" / f"{cell.name}.jsonl"
        summary_file = data.with_suffix(".summary.json")
        if self._cached(summary_file):  # written after the set: the set is whole
            return list(TraceReader(data)), json.loads(summary_file.read_text())
        stop_point(self.stop, f"before compressing {cell.name}")
        print(f"\n== compressing: {cell.name}", flush=True)
        options = {**cell.compress_options(), "explain": self.config.explain}
        rewriter = None
        if cell.method == "rewrite":
            from cd_fast.generate import make_generator

            rewriter = make_generator(self.config.rewriter, self.backend, device=self.device)
        try:
            result = compress(
                self.train,
                cell.method,
                cell.budget,
                counter=self.tokenizer,
                scorer=scorer,
                scores=scores,
                rewriter=rewriter,
                **options,
            )
        finally:
            if rewriter is not None:
                rewriter.close()
        write_jsonl(data, result.records)
        with AtomicWriter(summary_file) as handle:
            json.dump(result.summary, handle, indent=1)
        summary = result.summary
        print(
            f"{cell.name}: asked {summary['ratio_asked']:.3f}, reached "
            f"{summary['ratio_tokens']:.3f}, answers kept {summary['answers_kept']}/"
            f"{summary['answers_in_original']}"
        )
        return result.records, summary

    def trained(self, name: str, records: list[Trace], tokens_per_step: int) -> dict[str, Any]:
        """Train (or, resuming, continue or reuse) the student on one set."""
        from cd_fast.train import TrainConfig, Trainer

        folder = self.out / f"train-{name}"
        done, partial = folder / "row.json", folder / "partial.json"
        if self._cached(done):
            return json.loads(done.read_text())
        spent = json.loads(partial.read_text())["train_seconds"] if self._cached(partial) else 0
        stop_point(self.stop, f"before training the student on {name}")
        config = TrainConfig(
            output_dir=str(folder),
            overwrite_output_dir=not self.resume,  # a fresh run into the same folder starts over
            resume=self.resume,
            learning_rate=self.config.learning_rate,
            num_train_epochs=self.config.epochs,
            max_tokens_per_step=tokens_per_step,
            max_seq_length=min(self.config.max_seq_length, tokens_per_step),
            save_steps=0,  # a checkpoint only when a stop signal comes
            export="merged",
            device=self.device,
            seed=self.config.seed,
            **{"warmup_ratio": 0.05, "logging_steps": 10, **self.train_options},
        )
        print(f"\n== training the student on {name} traces", flush=True)
        trainer = Trainer(self.config.student, records, config)
        tic = time.perf_counter()
        result = trainer.train()
        spent += time.perf_counter() - tic
        if result.interrupted:
            partial.write_text(json.dumps({"train_seconds": spent}))
            where = f"while training the student on {name} (checkpoint at step {result.step})"
            raise SweepStopped(result.stopped_by, where)
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

    def evaluated(self, name: str, model: str) -> dict[str, Any]:
        from cd_fast.eval import EvalConfig, evaluate

        stop_point(self.stop, f"before evaluating the student trained on {name}")
        print(f"\n== evaluating the student trained on {name}", flush=True)
        folder = self.out / f"eval-{name}"
        if not self.resume:
            shutil.rmtree(folder, ignore_errors=True)  # a fresh run starts over
        config = EvalConfig(
            model=model,
            max_new_tokens=self.config.max_new_tokens,
            batch_size=self.config.eval_batch_size,
            device=self.device,
            grader=self.config.grader,
        )
        baseline = self.out / f"eval-{ORIGINAL}" if name != ORIGINAL else None
        metrics = evaluate(self.evaluation, folder, config, resume=self.resume, baseline=baseline)
        keys = (
            "accuracy",
            "mean_output_tokens",
            "accuracy_per_1k_tokens",
            "truncation_rate",
            "by_domain",
        )
        return {k: metrics[k] for k in keys if k in metrics}

    def agreement(self, cells: list[Cell], scores: dict | None, scorer: Any) -> list[dict]:
        """Mean Jaccard of the units kept by each pair of the grid's step criteria, per budget,
        at each granularity the grid uses, over the first AGREEMENT_TRACES traces."""
        from cd_fast.compress import CompressConfig
        from cd_fast.compress.agreement import criteria_agreement

        steps = [c.criterion for c in cells if c.method == "step"]
        criteria = list(dict.fromkeys(self.config.agreement_criteria or steps))
        if len(criteria) < 2:
            return []
        units = self.config.granularities or sorted({default_granularity(c) for c in criteria})
        rows = []
        for unit in units:
            found = criteria_agreement(
                self.train[:AGREEMENT_TRACES],
                CompressConfig(method="step", granularity=unit, criterion=criteria[0]),
                self.tokenizer,
                scorer=scorer,
                scores=scores,
                budgets=tuple(self.config.budgets),
                criteria=criteria,
            )
            rows += [{**row, "granularity": unit} for row in found]
        return rows


def run_sweep(
    source: str | Path | list[Trace],
    out: str | Path,
    config: SweepConfig,
    eval_source: str | Path | list[Trace] | None = None,
    read: Any = None,
    resume: bool = False,
    backend: BackendConfig | None = None,
) -> dict[str, Any]:
    """Run the sweep of `config` on the traces of `source` (a file read with `read`, a
    ReadConfig, or records) into `out`, evaluating on `eval_source` (or a held-out tail of
    `source`); returns the results (also in OUT/sweep.json) and writes the report. A stop signal
    raises SweepStopped at the next safe point; `resume` continues."""
    from cd_fast.data import ReadConfig

    out, read = Path(out), read or ReadConfig()
    every = list(read.open(source))
    if eval_source is None:
        train, evaluation = split_holdout(every, config.holdout, Path(str(source)))
    else:
        train, evaluation = every, list(read.open(eval_source, need_traces=False))
    train = keep_domains(train, config.domains, "training")
    evaluation = keep_domains(evaluation, config.domains, "evaluation")
    ungraded = [t.id for t in evaluation if not gradable(t, config.grader)]
    if ungraded:  # refused before any training, not when the first eval reaches them
        raise ValueError(
            f"{eval_source}: {len(ungraded)} evaluation records have no gold answer (nor a "
            f"constraint `check`), the first {ungraded[0]!r}: give them one or leave them out"
        )
    inputs = {"eval": eval_source} if isinstance(eval_source, (str, Path)) else {}
    options = {**config.shared_options(), "rewriter_backend": backend and backend.backend}
    manifest = job_manifest("sweep", read, source, options, inputs=inputs)
    with SweepRun(out, manifest, resume) as run, StopSignals() as stop:
        run.start()
        results = Sweep(out, config, train, evaluation, stop, resume, backend).run()
    table = write_report([out], out / "report.md")
    print("\n" + table)
    print(f"\nreport: {out / 'report.md'} (plots and agreement.md beside it)")
    return results
