"""`cdfast generate`: a teacher model's reasoning traces for a file of questions, the first stage
of compress-then-distil.

Each question is sampled `n` times through the generation layer (`cd_fast.generate`); a sample
is graded (`cd_fast.eval.grade.grade_record`: math-verify, or the record's own `grader`) where
the question has a gold answer or a constraint to check, and `keep` decides which
samples become records: all, the correct ones, or each question's shortest correct one
(rejection sampling, as OpenR1- and s1-style distillation sets are built).

Files beside OUT:
  OUT                 the kept traces as cd_fast records (written once every question is done)
  OUT.samples.jsonl   every sample of every finished question, graded, one line per question,
                      appended as questions finish: the unit of resume. It stays, so a finished
                      run can be kept differently (--resume --keep ...) without generating again
  OUT.summary.json    accuracy, pass@n, truncation, token counts, output tokens/s
  OUT.run.json        the run's manifest (checked on --resume); OUT.lock while it runs
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cd_fast.config import check_ranges, option
from cd_fast.data import AtomicWriter, ReadConfig, Trace, TraceReader, dumps_record
from cd_fast.eval.grade import gradable, grade_record
from cd_fast.generate import (
    BackendConfig,
    Generator,
    Reply,
    Request,
    Sampling,
    make_generator,
)
from cd_fast.runs import RunFolder, job_manifest
from cd_fast.runtime import batched

KEEP = ("all", "correct", "shortest-correct")
SAMPLING = "sampling"


@dataclass
class GenerateConfig:
    """How `cdfast generate` samples the teacher; CLI flags map one to one. Defaults follow
    reasoning-model cards (Qwen3, DeepSeek-R1: temperature 0.6, top-p 0.95, long outputs)."""

    model: str = option(
        help="The teacher: folder, hub id or .gguf (transformers, vllm backends); the served "
        "model name (http)."
    )
    n: int = option(1, minimum=1, group=SAMPLING, help="Traces sampled per question.")
    temperature: float = option(
        0.6, minimum=0, group=SAMPLING, help="Sampling temperature; 0 is greedy (then --n 1)."
    )
    top_p: float = option(0.95, above=0, maximum=1, group=SAMPLING, help="Nucleus sampling.")
    max_new_tokens: int = option(
        32768,
        minimum=1,
        group=SAMPLING,
        help="Generation cap per trace; a trace that reaches it is marked truncated.",
    )
    seed: int = option(
        0,
        group=SAMPLING,
        help="Each question's sampling is seeded from this seed and its id, so a resumed run "
        "writes what a straight run writes (on a backend that honours seeds).",
    )
    stop: tuple[str, ...] = option((), group=SAMPLING, help="Extra stop strings; repeatable.")
    system: str | None = option(
        None,
        help="A system prompt before each question (reasoning-model cards usually advise none).",
    )
    template: str = option(
        "{question}",
        help="The user turn, with {question} replaced; e.g. '{question} Please reason step by "
        "step, and put your final answer within \\boxed{}.' (DeepSeek-R1's advice for math). "
        "The records keep the bare question.",
    )
    keep: str = option(
        "all",
        choices=KEEP,
        help="Which samples become records: all; correct (graded right against the gold); "
        "shortest-correct (each question's shortest correct sample). Questions without a gold "
        "answer keep nothing under the last two.",
    )
    batch_size: int = option(
        16,
        minimum=1,
        help="Questions handed to the backend together (transformers: generated together; "
        "http: up to --concurrency in flight). Each question is committed as it finishes.",
    )
    device: str | None = option(
        None, help="transformers backend: cuda or cpu (default: cuda when available)."
    )
    compile: bool = option(
        False, help="transformers backend on CUDA: static KV cache and torch.compile."
    )

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("GenerateConfig.model: name the teacher (folder, hub id or .gguf)")
        if "{question}" not in self.template:
            raise ValueError(f"--template {self.template!r}: it needs {{question}}")
        check_ranges(self)
        self.sampling(0)  # one line for settings no backend can sample with

    def sampling(self, seed: int) -> Sampling:
        return Sampling(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            n=self.n,
            seed=seed,
            stop=tuple(self.stop),
        )

    def result_options(self) -> dict[str, Any]:
        """What decides the samples (the manifest's options): not the device, the batch size,
        nor `keep` (it only filters the samples, and may change on --resume)."""
        skip = ("device", "batch_size", "keep", "compile")
        return {k: v for k, v in asdict(self).items() if k not in skip}


def question_seed(seed: int, question_id: str) -> int:
    """The seed of one question's samples: from the run's seed and the question's id, not its
    position, so it survives --limit and resumes."""
    digest = hashlib.sha256(f"{seed}:{question_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


class GenerateRun(RunFolder):
    """generate's files beside OUT (see the module doc): OUT.lock, OUT.run.json, the samples
    ledger (scratch until a question finishes), OUT and OUT.summary.json."""

    def _beside(self, suffix: str) -> Path:
        return self.output.with_name(self.output.name + suffix)

    @property
    def lock_file(self) -> Path:
        return self._beside(".lock")

    @property
    def manifest_file(self) -> Path:
        return self._beside(".run.json")

    @property
    def samples_file(self) -> Path:
        return self._beside(".samples.jsonl")

    @property
    def summary_file(self) -> Path:
        return self._beside(".summary.json")

    def finished(self) -> tuple[dict[str, tuple[int, int]], int]:
        """The finished questions in the ledger, read in one pass and not kept: each id's input
        position and byte offset, and their output tokens (a line cut short by a kill is not
        counted)."""
        found: dict[str, tuple[int, int]] = {}
        tokens = 0
        if not self.samples_file.is_file():
            return found, tokens
        offset = 0
        with self.samples_file.open("rb") as ledger:
            for line in ledger:
                if not line.endswith(b"\n"):
                    break
                row = json.loads(line)
                found[row["id"]] = (row["index"], offset)
                tokens += _output_tokens(row)
                offset += len(line)
        return found, tokens

    def work(self) -> str | None:
        done = 0
        if self.samples_file.is_file():
            with self.samples_file.open("rb") as ledger:
                done = sum(block.count(b"\n") for block in iter(lambda: ledger.read(1 << 20), b""))
        return f"{done} generated questions ({self.samples_file.name})" if done else None

    def refusal(self, work: str) -> str:
        return (
            f"{self.output}: a run beside it holds {work}: pass --resume to continue it (or to "
            "keep its samples differently), or choose another output"
        )

    def scratch(self) -> list[Path]:
        return [self.samples_file]

    def drop_torn_line(self) -> None:
        """Cut a line a kill left half-written, so appends start on a line of their own."""
        path = self.samples_file
        if not path.is_file():
            return
        with path.open("rb") as ledger:
            end = ledger.seek(0, os.SEEK_END)
            while end > 0:
                start = max(0, end - (1 << 16))
                ledger.seek(start)
                newline = ledger.read(end - start).rfind(b"\n")
                if newline >= 0:
                    end = start + newline + 1
                    break
                end = start
        os.truncate(path, end)


def generate_traces(
    source: str | Path | TraceReader | Iterable[Trace],
    output: str | Path,
    config: GenerateConfig,
    read: ReadConfig | None = None,
    resume: bool = False,
    backend: BackendConfig | None = None,
    generator: Generator | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Sample the teacher on every question of `source` (a file read with `read`, or records)
    and write the kept traces to `output` (JSONL); returns the summary.

    The teacher answers through `generator`, or one built from `backend` (default:
    transformers), loaded only when a question is left to generate. `on_progress(questions,
    output_tokens)` is called as questions finish (those finished earlier count at once)."""
    read = read or ReadConfig()
    output = Path(output)
    backend = backend or BackendConfig()
    opened = read.open(source, need_traces=False)
    options = {**config.result_options(), "backend": backend.backend}
    manifest = job_manifest("generate", read, source, options)
    with GenerateRun(output, manifest, resume) as run:
        run.drop_torn_line()
        done, tokens = run.finished()  # id -> (input position, ledger offset)
        run.start()
        if on_progress is not None and done:
            on_progress(len(done), tokens)
        own = generator is None  # a backend this call loads, and frees

        def teacher() -> Generator:
            nonlocal generator
            if generator is None:
                generator = make_generator(
                    config.model,
                    backend,
                    device=config.device,
                    batch_size=config.batch_size,
                    compile=config.compile,
                )
            return generator

        pending = _pending(enumerate(read.records(opened)), done)
        try:
            with run.samples_file.open("ab") as ledger:
                for batch in batched(pending, config.batch_size):
                    for row in _sample(teacher(), batch, config):
                        done[row["id"]] = (row["index"], ledger.tell())
                        ledger.write((json.dumps(row, ensure_ascii=False) + "\n").encode())
                        ledger.flush()
                        os.fsync(ledger.fileno())
                        if on_progress is not None:
                            on_progress(1, _output_tokens(row))
        finally:
            if own and generator is not None:
                generator.close()
        counts, kept = [], 0  # one row at a time: a ledger of long traces need not fit in memory
        with run.samples_file.open("rb") as ledger, AtomicWriter(output) as handle:
            for _, offset in sorted(done.values()):
                ledger.seek(offset)
                row = json.loads(ledger.readline())
                for record in _records(row, config):
                    handle.write(dumps_record(record) + "\n")
                    kept += 1
                counts.append(_counts(row))
        summary = summarize(counts, kept, config, backend.backend)
        with AtomicWriter(run.summary_file) as handle:
            json.dump(summary, handle, indent=1)
        return summary


def _pending(
    records: Iterator[tuple[int, Trace]], done: dict[str, tuple[int, int]]
) -> Iterator[tuple[int, Trace]]:
    for index, trace in records:
        if trace.id in done:
            continue
        if not trace.question.strip():
            raise ValueError(
                f"record {trace.id!r} (record {index + 1} of the input) has an empty question: "
                "fix or remove it, then rerun with --resume (nothing generated is lost)"
            )
        yield index, trace


def _sample(
    generator: Generator, batch: list[tuple[int, Trace]], config: GenerateConfig
) -> Iterator[dict[str, Any]]:
    """The ledger row of each question of `batch`, as each finishes."""
    seeds = [question_seed(config.seed, trace.id) for _, trace in batch]
    requests = [
        Request.user(
            config.template.replace("{question}", trace.question),
            config.sampling(seed),
            system=config.system,
        )
        for (_, trace), seed in zip(batch, seeds, strict=True)
    ]
    last = time.perf_counter()
    for i, replies in generator.stream(requests):
        index, trace = batch[i]
        now = time.perf_counter()
        seconds, last = now - last, now
        yield {
            "index": index,
            "id": trace.id,
            "question": trace.question,
            "gold": trace.gold,
            "meta": trace.meta,
            "seed": seeds[i],
            "seconds": round(seconds, 4),  # wall time since the previous question finished
            "samples": [_graded(reply, trace) for reply in replies],
        }


def _graded(reply: Reply, trace: Trace) -> dict[str, Any]:
    correct = grade_record(trace, reply.full_text()) if gradable(trace) else None
    return {**reply.to_dict(), "correct": correct}


def kept_samples(samples: list[dict[str, Any]], keep: str) -> list[int]:
    """Which of a question's samples `keep` keeps (their positions)."""
    if keep == "all":
        return list(range(len(samples)))
    correct = [k for k, s in enumerate(samples) if s["correct"]]
    if keep == "correct" or not correct:
        return correct
    return [min(correct, key=lambda k: (samples[k]["output_tokens"] or math.inf, k))]


def _records(row: dict[str, Any], config: GenerateConfig) -> Iterator[Trace]:
    """The kept samples of one question as records: the reasoning as the trace and the reply
    as the answer (a reply without separate reasoning is all trace)."""
    samples = row["samples"]
    for k in kept_samples(samples, config.keep):
        sample = samples[k]
        reasoning = sample["reasoning"]
        yield Trace(
            id=row["id"] if len(samples) == 1 else f"{row['id']}#{k}",
            question=row["question"],
            trace=reasoning if reasoning is not None else sample["text"],
            answer=(sample["text"] or None) if reasoning is not None else None,
            gold=row["gold"],
            meta={
                **row["meta"],
                "generation": {
                    "teacher": config.model,
                    "sample": k,
                    "seed": row["seed"],
                    "temperature": config.temperature,
                    "top_p": config.top_p,
                    "max_new_tokens": config.max_new_tokens,
                    "prompt_tokens": sample["prompt_tokens"],
                    "output_tokens": sample["output_tokens"],
                    "truncated": sample["truncated"],
                    "correct": sample["correct"],
                },
            },
        )


def _output_tokens(row: dict[str, Any]) -> int:
    return sum(s["output_tokens"] or 0 for s in row["samples"])


COUNTED = ("correct", "truncated", "prompt_tokens", "output_tokens")


def _counts(row: dict[str, Any]) -> dict[str, Any]:
    """A ledger row without its texts: what the summary counts."""
    samples = [{key: s[key] for key in COUNTED} for s in row["samples"]]
    return {"seconds": row["seconds"], "samples": samples}


def summarize(
    rows: list[dict[str, Any]], kept: int, config: GenerateConfig, backend: str
) -> dict[str, Any]:
    """The run's summary from each question's counts (`_counts`)."""
    samples = [s for row in rows for s in row["samples"]]
    graded = [s for s in samples if s["correct"] is not None]
    gold_rows = [row for row in rows if any(s["correct"] is not None for s in row["samples"])]
    lengths = [s["output_tokens"] for s in samples if s["output_tokens"] is not None]
    seconds = sum(row["seconds"] for row in rows)
    output_tokens = sum(lengths)
    return {
        "teacher": config.model,
        "backend": backend,
        "questions": len(rows),
        "samples": len(samples),
        "keep": config.keep,
        "records_out": kept,
        "questions_without_gold": len(rows) - len(gold_rows),
        "accuracy": round(sum(bool(s["correct"]) for s in graded) / len(graded), 4)
        if graded
        else None,
        f"pass_at_{config.n}": round(
            sum(any(s["correct"] for s in row["samples"]) for row in gold_rows) / len(gold_rows), 4
        )
        if gold_rows
        else None,
        "truncation_rate": round(sum(s["truncated"] for s in samples) / len(samples), 4)
        if samples
        else 0.0,
        "prompt_tokens": sum(s["prompt_tokens"] or 0 for s in samples),
        "output_tokens": output_tokens,
        "mean_output_tokens": round(statistics.fmean(lengths), 1) if lengths else None,
        "seconds": round(seconds, 2),
        "output_tokens_per_s": round(output_tokens / seconds, 1) if seconds else None,
    }
