"""`cdfast eval`: the student answers each question in full (reasoning + answer), greedy, in
batches with a KV cache; each response is graded against the gold answer; metrics are the
papers': accuracy, output length, truncation, accuracy per 1k output tokens, and the ratios to
a baseline run (accuracy retained, output-length reduction, per-token efficiency gain).

A run folder holds predictions.jsonl (one graded record per line, appended per batch, so a
killed run resumes where it stopped) and metrics.json.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cd_fast.config import check_ranges, option
from cd_fast.data import AtomicWriter, ReadConfig, Trace, TraceReader
from cd_fast.eval.grade import GRADERS, gradable, grade_record
from cd_fast.generate import BackendConfig, Generator, Request, Sampling, make_generator
from cd_fast.runs import RunFolder, job_manifest
from cd_fast.runtime import batched

PREDICTIONS = "predictions.jsonl"
METRICS = "metrics.json"


@dataclass
class EvalConfig:
    """How `cdfast eval` generates (greedy); CLI flags map one to one. The backend and how it
    reaches a server are a `cd_fast.generate.BackendConfig`."""

    model: str = option(
        help="The student: folder, hub id or .gguf file (the served model name for --backend http)."
    )
    max_new_tokens: int = option(
        1024,
        minimum=1,
        help="Generation cap; a response that reaches it without stopping counts as truncated.",
    )
    batch_size: int = option(
        16, minimum=1, help="Questions generated together (and committed together)."
    )
    stop: tuple[str, ...] = option((), help="Extra stop strings (EOS always stops).")
    device: str | None = option(
        None, help="transformers backend: cuda or cpu (default: cuda when available)."
    )
    compile: bool = option(
        False,
        help="transformers backend on CUDA: static KV cache and torch.compile of the forward.",
    )
    grader: str | None = option(
        None,
        choices=GRADERS,
        help="Grade every record this way instead of by its own `grader` field (default: the "
        "record's, else math). math: math-verify | numeric: the stated number | text: "
        "normalised match with the gold or an `accept` alias | choice: one of the record's "
        "`options` (a letter, \\boxed{C} or the option's text) | constraint: the record's "
        "`check` with its `params` (word_count, repeat_word, json_keys, ...).",
    )

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("EvalConfig.model: name the student (folder, hub id or .gguf)")
        check_ranges(self)

    def result_options(self) -> dict[str, Any]:
        """The fields that decide the predictions (a run's manifest options): not the device
        or batch size."""
        return {
            "model": self.model,
            "max_new_tokens": self.max_new_tokens,
            "stop": self.stop,
            "grader": self.grader,
        }

    def requests(self, questions: list[str]) -> list[Request]:
        sampling = Sampling(max_new_tokens=self.max_new_tokens, stop=self.stop)
        return [Request.user(q, sampling) for q in questions]


@dataclass
class Prediction:
    id: str
    question: str
    gold: str | None
    prediction: str
    output_tokens: int
    truncated: bool
    correct: bool
    domain: str | None = None


def _measures(predictions: list[dict[str, Any]]) -> dict[str, Any]:
    count = len(predictions)
    lengths = [p["output_tokens"] for p in predictions]
    accuracy = sum(p["correct"] for p in predictions) / count if count else 0.0
    mean_tokens = statistics.fmean(lengths) if lengths else 0.0
    return {
        "records": count,
        "accuracy": round(accuracy, 4),
        "mean_output_tokens": round(mean_tokens, 1),
        "median_output_tokens": statistics.median(lengths) if lengths else 0,
        "truncation_rate": round(sum(p["truncated"] for p in predictions) / max(count, 1), 4),
        "accuracy_per_1k_tokens": round(accuracy / (mean_tokens / 1000), 4) if mean_tokens else 0,
    }


def record_domain(record: Trace) -> str | None:
    """A record's domain (`meta.domain`), which the sweep's tables break results down by."""
    domain = record.meta.get("domain")
    return None if domain is None else str(domain)


def metrics(
    predictions: list[dict[str, Any]],
    baseline: dict[str, Any] | None = None,
    training: dict[str, float | None] | None = None,
):
    """Accuracy, output length and truncation (and per domain, when the records carry one);
    with a baseline run's metrics, the ratios (and the student's `training` data ratios,
    `training_data`)."""
    out = _measures(predictions)
    domains = sorted({p["domain"] for p in predictions if p.get("domain") is not None})
    if domains:
        out["by_domain"] = {
            domain: _measures([p for p in predictions if p.get("domain") == domain])
            for domain in domains
        }
    if training is not None:
        out["training_data"] = training
    if baseline:
        out["vs_baseline"] = ratios(out, baseline)
    return out


def metrics_table(result: dict[str, Any]) -> str:
    """A finished run's metrics as aligned rows (what `cdfast eval` prints)."""
    correct = round(result["accuracy"] * result["records"])
    rows = [
        ("model", result["model"]),
        ("accuracy", f"{result['accuracy']:.4f} ({correct}/{result['records']})"),
        (
            "output tokens",
            f"mean {result['mean_output_tokens']}, median {result['median_output_tokens']} "
            f"(cap {result['max_new_tokens']}; truncated {result['truncation_rate']:.1%})",
        ),
        ("accuracy / 1k tokens", str(result["accuracy_per_1k_tokens"])),
    ]
    for key, value in (result.get("vs_baseline") or {}).items():
        rows.append((key.replace("_", " "), "-" if value is None else str(value)))
    rows.append(("time (s)", str(result["seconds"])))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


class EvalRun(RunFolder):
    """eval's run folder: run.json (the manifest), predictions.jsonl (graded, appended per
    batch), metrics.json once finished, .lock."""

    @property
    def predictions_file(self) -> Path:
        return self.output / PREDICTIONS

    def predictions(self) -> list[dict[str, Any]]:
        """The graded predictions kept (a line cut short by a kill is dropped)."""
        path = self.predictions_file
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True) if path.exists() else []
        return [json.loads(x) for x in lines if x.endswith("\n")]

    def work(self) -> str | None:
        done = len(self.predictions())
        return f"{done} predictions" if done else None

    def refusal(self, work: str) -> str:
        return (
            f"{self.output} already holds {work}: pass --resume to continue that run, or choose "
            "a new folder"
        )

    def scratch(self) -> list[Path]:
        return [self.predictions_file]


def evaluate(
    source: str | Path | TraceReader | Iterable[Trace],
    run_dir: str | Path,
    config: EvalConfig,
    read: ReadConfig | None = None,
    resume: bool = False,
    baseline: Path | None = None,
    generator: Generator | None = None,
    on_progress: Callable[[int], None] | None = None,
    backend: BackendConfig | None = None,
) -> dict[str, Any]:
    """Generate, grade and score every question of `source` (a file read with `read`, or
    records) into `run_dir`; returns the metrics.

    The student answers through `generator`, or the generation `backend` (default:
    transformers). The run's manifest (input files, reading options, the options that decide
    the predictions) is checked on --resume: a run under other settings is refused."""
    read = read or ReadConfig()
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"{run_dir} is a file: eval writes a run folder; choose another -o")
    base = read_metrics(Path(baseline)) if baseline else None
    records = read.records(read.open(source, need_traces=False))
    backend = backend or BackendConfig()
    options = {**config.result_options(), "backend": backend.backend}
    manifest = job_manifest("eval", read, source, options)
    with EvalRun(run_dir, manifest, resume) as run:
        own = generator is None  # a backend this call loads, and frees
        generator = generator or make_generator(  # loads (or refuses) the model
            config.model,
            backend,
            device=config.device,
            batch_size=config.batch_size,
            compile=config.compile,
        )
        try:
            done = run.predictions()
            run.start()
            with AtomicWriter(run.predictions_file) as handle:  # without a torn last line
                handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in done)
            return _evaluate(records, run_dir, config, done, base, generator, on_progress)
        finally:
            if own:
                generator.close()


def _evaluate(
    traces: Iterable[Trace],
    run_dir: Path,
    config: EvalConfig,
    done: list[dict[str, Any]],
    base: dict[str, Any] | None,
    generator: Generator,
    on_progress: Callable[[int], None] | None,
) -> dict[str, Any]:
    path = run_dir / PREDICTIONS
    finished = {r["id"] for r in done}
    started = time.perf_counter()

    def pending() -> Iterator[Trace]:
        for trace in traces:
            if trace.id in finished:
                if on_progress is not None:
                    on_progress(1)
                continue
            if not gradable(trace, config.grader):
                raise ValueError(
                    f"record {trace.id!r} has no gold answer to grade against (and no "
                    "constraint `check`): give it a gold, or leave it out of the eval set"
                )
            yield trace

    with path.open("a", encoding="utf-8") as handle:
        for batch in batched(pending(), config.batch_size):
            replies = generator.generate(config.requests([t.question for t in batch]))
            for trace, (reply,) in zip(batch, replies, strict=True):
                if reply.output_tokens is None:
                    raise ValueError(
                        "the server's replies carry no token usage: eval needs output lengths; "
                        "use a server that reports `usage` (vLLM, SGLang, llama.cpp, "
                        "transformers serve)"
                    )
                text = reply.full_text()
                record = Prediction(
                    id=trace.id,
                    question=trace.question,
                    gold=trace.gold,
                    prediction=text,
                    output_tokens=reply.output_tokens,
                    truncated=reply.truncated,
                    correct=grade_record(trace, text, config.grader),
                    domain=record_domain(trace),
                )
                done.append(asdict(record))
                handle.write(json.dumps(asdict(record), ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
            if on_progress is not None:
                on_progress(len(batch))
    result = metrics(done, base, training_data(config.model))
    result.update(
        {
            "model": config.model,
            "max_new_tokens": config.max_new_tokens,
            "seconds": round(time.perf_counter() - started, 2),
        }
    )
    with AtomicWriter(run_dir / METRICS) as handle:
        json.dump(result, handle, indent=1)
    return result


COMPARE_COLUMNS = (
    "accuracy",
    "mean_output_tokens",
    "median_output_tokens",
    "truncation_rate",
    "accuracy_per_1k_tokens",
)


def read_metrics(run_dir: Path) -> dict[str, Any]:
    """A finished eval run's metrics.json, or one line saying why it cannot be read."""
    file = run_dir / METRICS
    if not file.is_file():
        raise FileNotFoundError(f"{file}: not a finished `cdfast eval` run folder")
    try:
        result = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{file}: not valid JSON ({error}): rerun that eval") from None
    missing = [
        c for c in ("accuracy", *COMPARE_COLUMNS) if not isinstance(result, dict) or c not in result
    ]
    if missing:
        raise ValueError(f"{file}: not a `cdfast eval` metrics file (no {missing[0]})")
    return result


def compare_table(run_dirs: list[Path]) -> str:
    """Markdown table of several eval runs; ratios to the first run as the baseline."""
    runs = [read_metrics(Path(run)) for run in run_dirs]
    header = [
        "run",
        *COMPARE_COLUMNS,
        "accuracy_retained",
        "length_reduction",
        "efficiency_gain",
        "asked_budget",
        "training_ratio",
        "inference_length_ratio",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    base = runs[0]
    for run_dir, run in zip(run_dirs, runs, strict=True):
        vs = ratios(run, base)
        cells = [
            Path(run_dir).name,
            *(str(run[c]) for c in COMPARE_COLUMNS),
            *(str(v if v is not None else "-") for v in vs.values()),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ratios(run: dict[str, Any], base: dict[str, Any]) -> dict[str, float | None]:
    """The papers' ratios of a run to a baseline run (their metrics): accuracy retained,
    output-length reduction and per-token efficiency gain; and the three budgets of the
    compress-then-distil papers: the budget the student's training traces were asked to keep,
    the token ratio they reached, and the student's output length against the baseline's."""
    accuracy, tokens = run["accuracy"], run["mean_output_tokens"]
    base_accuracy, base_tokens = base["accuracy"], base["mean_output_tokens"]
    training = run.get("training_data") or {}
    return {
        "accuracy_retained": round(accuracy / base_accuracy, 4) if base_accuracy else None,
        "output_length_reduction": round(base_tokens / tokens, 3) if tokens else None,
        "per_token_efficiency_gain": round((accuracy / tokens) / (base_accuracy / base_tokens), 3)
        if tokens and base_accuracy and base_tokens
        else None,
        "asked_budget": training.get("asked_budget"),
        "training_ratio": training.get("training_ratio"),
        "inference_length_ratio": round(tokens / base_tokens, 4) if base_tokens else None,
    }


def training_data(model: str | Path) -> dict[str, float | None]:
    """What the student was trained on, as far as its files tell: the `cdfast train` run it came
    from (run.json in the model folder or the one above) names the data file, and that file's
    `cdfast compress` summary (FILE.summary.json) holds the budget asked and the token ratio
    reached. None for what is not known (a hub model, traces that were never compressed)."""
    known: dict[str, float | None] = {"asked_budget": None, "training_ratio": None}
    folder = Path(model).expanduser()
    manifests = [f / "run.json" for f in (folder, folder.parent) if folder.is_dir()]
    for manifest in filter(Path.is_file, manifests):
        try:
            saved = json.loads(manifest.read_text(encoding="utf-8"))
            data = saved["inputs"]["data"]["path"] if saved.get("command") == "train" else None
        except (OSError, ValueError, KeyError, TypeError):
            continue
        summary = Path(f"{data}.summary.json") if data else None
        if summary is None or not summary.is_file():
            continue
        try:
            compressed = json.loads(summary.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        known.update(
            asked_budget=compressed.get("budget"), training_ratio=compressed.get("ratio_tokens")
        )
        break
    return known
