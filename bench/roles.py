"""Step roles against hand labels: the tagger's per-role precision and recall, and what each
step criterion keeps of each labelled role at a budget (tests/data/roles, real Qwen3-8B traces).

The labels (tests/data/roles/qwen3-8b-think-on.jsonl, rubric in RUBRIC.md beside it) give each
sentence of 40 traces a role. Agreement is counted per character, so it does not depend on how
a sentence is split. "kept" is the share of a role's labelled characters that survive
compression, to read against the budget: keeping deduction at >= 1.5x the budget and
backtracking + uncertainty at <= 0.5x is what the role criterion is for.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from .harness import environment, write_results

LABELS = Path(__file__).resolve().parents[1] / "tests/data/roles/qwen3-8b-think-on.jsonl"
CRITERIA = ("role", "role+value-flow", "value-flow", "random")
GRANULARITIES = ("sentence", "paragraph")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--labels", type=Path, default=LABELS, help="labelled traces (JSONL)")
    parser.add_argument("--budget", type=float, default=0.3)
    parser.add_argument(
        "--tokenizer",
        help="counts the budget (default: a byte-level BPE trained on these traces, no download)",
    )


def labelled_traces(labels: Path, data_dir: Path) -> list[tuple[Any, list[list]]]:
    """(Trace, [[start, end, role], ...]) per labelled record; an error when a trace's text is
    not the one that was labelled."""
    from cd_fast.data import TraceReader

    folder = data_dir / "qwen3-8b-thinking"
    reader = TraceReader(folder / "qwen3-8b__think-on.jsonl", prompts=folder / "items.json")
    traces = {t.id: t for t in reader}
    out = []
    for line in labels.read_text().splitlines():
        row = json.loads(line)
        trace = traces[row["id"]]
        if hashlib.sha256(trace.trace.encode()).hexdigest() != row["sha256"]:
            raise ValueError(
                f"{labels}: record {row['id']}: the trace differs from the labelled one"
            )
        out.append((trace, row["labels"]))
    return out


def char_roles(length: int, spans: list) -> np.ndarray:
    """int8 [length]: the role index of each character, -1 where none."""
    from cd_fast.compress.roles import ROLES

    out = np.full(length, -1, dtype=np.int8)
    for a, b, role in spans:
        out[a:b] = ROLES.index(role) if isinstance(role, str) else role
    return out


def tagger_agreement(labelled: list[tuple[Any, list]]) -> tuple[list[dict], float]:
    """Per-role precision, recall and F1 (characters), and the overall accuracy."""
    from cd_fast.compress.roles import ROLES, tag_roles
    from cd_fast.formats import final_answer
    from cd_fast.segment import segment_steps

    gold_all, predicted_all = [], []
    steps = segment_steps([t.trace for t, _ in labelled])
    for (trace, spans), sentences in zip(labelled, steps, strict=True):
        answer = final_answer(trace.gold, trace.answer, trace.trace)
        roles = tag_roles(trace.trace, sentences, trace.question, answer)
        predicted = [[a, b, r] for (a, b), r in zip(roles.spans.tolist(), roles.role, strict=True)]
        gold_all.append(char_roles(len(trace.trace), spans))
        predicted_all.append(char_roles(len(trace.trace), predicted))
    gold, predicted = np.concatenate(gold_all), np.concatenate(predicted_all)
    counted = gold >= 0
    gold, predicted = gold[counted], predicted[counted]
    rows = []
    for index, role in enumerate(ROLES):
        hit = int(((gold == index) & (predicted == index)).sum())
        precision = hit / max(int((predicted == index).sum()), 1)
        recall = hit / max(int((gold == index).sum()), 1)
        f1 = 2 * precision * recall / max(precision + recall, 1e-9)
        rows.append(
            {
                "role": role,
                "share": round(float((gold == index).mean()), 3),
                "precision": round(precision, 3),
                "recall": round(recall, 3),
                "f1": round(f1, 3),
            }
        )
    return rows, float((gold == predicted).mean())


def kept_by_role(labelled: list[tuple[Any, list]], records: list) -> dict[str, float]:
    """Share of each labelled role's characters that the compressed records kept (their
    --explain dropped spans say what went), over all records."""
    from cd_fast.compress.roles import ROLES

    by_id = {r.id: r for r in records}
    total = np.zeros(len(ROLES))
    kept = np.zeros(len(ROLES))
    for trace, spans in labelled:
        roles = char_roles(len(trace.trace), spans)
        alive = np.ones(len(trace.trace), dtype=bool)
        record = by_id.get(trace.id)
        if record is None:
            alive[:] = False
        else:
            for entry in record.meta["compression"]["explain"]["dropped"]:
                alive[entry["start"] : entry["end"]] = False
        for index in range(len(ROLES)):
            total[index] += (roles == index).sum()
            kept[index] += ((roles == index) & alive).sum()
    return {role: round(float(kept[i] / max(total[i], 1)), 3) for i, role in enumerate(ROLES)}


def counting_tokenizer(traces: list, name: str | None) -> Any:
    if name:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(name)
    from cd_fast.demo.tokenizer import train_tokenizer

    with tempfile.TemporaryDirectory() as folder:
        return train_tokenizer([t.trace for t in traces], Path(folder), vocab_size=2000)


def criterion_rows(labelled: list, counter: Any, budget: float) -> list[dict]:
    """Per step criterion and granularity: the ratio reached, the answers kept, the share of
    each labelled role kept, and the seconds the compression took."""
    from cd_fast.compress import compress

    traces = [t for t, _ in labelled]
    rows = []
    for granularity in GRANULARITIES:
        for criterion in CRITERIA:
            tic = time.perf_counter()
            result = compress(
                traces,
                "step",
                budget,
                counter=counter,
                criterion=criterion,
                granularity=granularity,
                explain=True,
            )
            seconds = time.perf_counter() - tic
            kept = kept_by_role(labelled, result.records)
            summary = result.summary
            rows.append(
                {
                    "criterion": criterion,
                    "granularity": granularity,
                    "ratio_tokens": summary["ratio_tokens"],
                    "answers": f"{summary['answers_kept']}/{summary['answers_in_original']}",
                    **kept,
                    "reflective": round(
                        _mean_share(labelled, kept, ("backtracking", "uncertainty")), 3
                    ),
                    "seconds": round(seconds, 3),
                }
            )
    return rows


def _mean_share(labelled: list, kept: dict[str, float], roles: tuple[str, ...]) -> float:
    """The kept share of the characters of `roles` together (weighted by their sizes)."""
    sizes = {role: 0 for role in roles}
    for _, spans in labelled:
        for a, b, role in spans:
            if role in sizes:
                sizes[role] += b - a
    total = sum(sizes.values())
    return sum(kept[r] * sizes[r] for r in roles) / max(total, 1)


def _best_seconds(work: Any, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        tic = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - tic)
    return best


def tagger_cost(data_dir: Path, counter: Any, repeats: int = 5) -> dict[str, float]:
    """Seconds (best of `repeats`) to tag every trace of the real set as compress does (C++, all
    CPUs) and with the Python reference, against a model-free step compression of the set
    (value-flow; it tags the same traces for its role statistics)."""
    from cd_fast.compress import compress
    from cd_fast.compress.roles import tag_roles_batch, tag_roles_py
    from cd_fast.data import TraceReader
    from cd_fast.formats import final_answer
    from cd_fast.segment import segment_steps

    folder = data_dir / "qwen3-8b-thinking"
    traces = list(TraceReader(folder / "qwen3-8b__think-on.jsonl", prompts=folder / "items.json"))
    texts = [t.trace for t in traces]
    questions = [t.question or "" for t in traces]
    steps = segment_steps(texts)
    answers = [final_answer(t.gold, t.answer, t.trace) for t in traces]
    native = _best_seconds(lambda: tag_roles_batch(texts, steps, questions, answers), repeats)
    reference = _best_seconds(
        lambda: [
            tag_roles_py(*args) for args in zip(texts, steps, questions, answers, strict=True)
        ],
        max(repeats // 2, 1),
    )
    compressing = _best_seconds(
        lambda: compress(traces, "step", 0.3, counter=counter, criterion="value-flow"), repeats
    )
    return {
        "traces": len(traces),
        "chars": sum(len(text) for text in texts),
        "tagging_s": round(native, 4),
        "reference_s": round(reference, 3),
        "compress_s": round(compressing, 3),
    }


def run(args: argparse.Namespace) -> list[dict]:
    from cd_fast.compress.roles import ROLES

    labelled = labelled_traces(args.labels, args.data_dir)
    agreement, accuracy = tagger_agreement(labelled)
    env = environment()
    write_results(
        args.results_dir,
        "roles-tagger",
        [{**row, **env} for row in agreement],
        ("role", "share", "precision", "recall", "f1"),
        "Step-role tagger against hand labels",
        f"{len(labelled)} real Qwen3-8B traces labelled per sentence (tests/data/roles, rubric in "
        f"RUBRIC.md); per-character precision and recall of `cd_fast.compress.roles.tag_roles`; "
        f"overall accuracy {accuracy:.3f}. share: the role's part of the labelled text.",
        "python -m bench roles",
    )
    counter = counting_tokenizer([t for t, _ in labelled], args.tokenizer)
    rows = criterion_rows(labelled, counter, args.budget)
    cost = tagger_cost(args.data_dir, counter)
    cost_line = (
        f"Tagger cost ({env['cpu']}, {env['cpus']} CPUs, best of 5): "
        f"{cost['tagging_s']} s to tag all {cost['traces']} real traces "
        f"({cost['chars']:,} characters; the Python reference tag_roles_py: "
        f"{cost['reference_s']} s), inside a {cost['compress_s']} s model-free step compression "
        f"of them (value-flow, which tags them for its role statistics): "
        f"{cost['tagging_s'] / cost['compress_s']:.1%} of it."
    )
    print(cost_line)
    write_results(
        args.results_dir,
        "roles-kept",
        [{**row, "budget": args.budget, **env} for row in rows],
        ("criterion", "granularity", "ratio_tokens", "answers", *ROLES, "reflective", "seconds"),
        f"What step pruning keeps of each labelled role at budget {args.budget}",
        "Share of each hand-labelled role's characters kept by step pruning (the budget counted "
        "with a byte-level BPE trained on these traces unless --tokenizer). reflective: "
        "backtracking + uncertainty together. The role criterion's aim: deduction >= 1.5x the "
        "budget, reflective <= 0.5x.",
        "python -m bench roles",
        extra=cost_line,
    )
    return rows
