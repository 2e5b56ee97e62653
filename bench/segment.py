"""Segmentation throughput: C++ on 1..N threads vs the pure-Python reference, on real traces
from ../shared/data replicated to the target size. MB are UTF-8 megabytes of trace text."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cd_fast.segment import available_cpus, segment_steps, segment_steps_py

from .harness import append_csv, bar_plot, environment, markdown_table, time_cpu


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target-mb", type=float, default=100.0, help="corpus size for C++ runs")
    parser.add_argument(
        "--python-mb", type=float, default=2.0, help="sample size for the (slow) Python reference"
    )
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        help="thread counts to run (default: 1, 2, 4, ... up to every available CPU)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per setting (median)")


def real_texts(data_dir: Path) -> list[str]:
    """Every real reasoning text in ../shared/data: Qwen3-8B traces and answers, MATH-500 and
    GSM8K problems and worked solutions."""
    sources = {
        "qwen3-8b-thinking/qwen3-8b__think-on.jsonl": ("thinking", "content"),
        "qwen3-8b-thinking/qwen3-8b__think-off.jsonl": ("content",),
        "math500/test.jsonl": ("problem", "solution"),
        "gsm8k/test.jsonl": ("question", "answer"),
        "gsm8k/train.jsonl": ("question", "answer"),
    }
    texts: list[str] = []
    for name, keys in sources.items():
        path = data_dir / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: pass --data-dir (the shared/data folder)")
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                record = json.loads(line)
                texts += [record[k] for k in keys if isinstance(record.get(k), str) and record[k]]
    return texts


def utf8_mb(texts: list[str]) -> float:
    return sum(len(t.encode("utf-8")) for t in texts) / 1e6


def replicate(texts: list[str], target_mb: float) -> list[str]:
    """Fresh string objects (not references to the same ones) until target_mb is reached, so the
    C++ side streams real memory instead of re-reading a cache-resident set."""
    unit = utf8_mb(texts)
    copies = max(1, int(-(-target_mb // unit)))
    return [(text + " ")[:-1] for _ in range(copies) for text in texts]


def run(args: argparse.Namespace) -> list[dict]:
    cpus = available_cpus()
    threads = args.threads or sorted({1, *[2**k for k in range(1, 8) if 2**k < cpus], cpus})
    base = real_texts(args.data_dir)
    corpus = replicate(base, args.target_mb)
    corpus_mb = utf8_mb(corpus)
    sample, sample_mb = [], 0.0
    for text in base:
        if sample_mb >= args.python_mb:
            break
        sample.append(text)
        sample_mb += len(text.encode("utf-8")) / 1e6
    print(
        f"corpus: {len(base)} real texts, {utf8_mb(base):.1f} MB, replicated to {corpus_mb:.1f} MB"
    )

    reference = segment_steps_py(sample)
    native = segment_steps(sample, 1)
    mismatches = sum(
        not (a.shape == b.shape and (a == b).all()) for a, b in zip(reference, native, strict=True)
    )
    if mismatches:
        raise RuntimeError(f"C++ and Python disagree on {mismatches} sample texts")

    env = environment()
    py_seconds = time_cpu(lambda: segment_steps_py(sample), repeats=1, warmup=0)
    py_rate = sample_mb / py_seconds
    rows = [
        {
            **env,
            "benchmark": "segment",
            "provider": "python-reference",
            "threads": 1,
            "mb": round(sample_mb, 2),
            "seconds": round(py_seconds, 4),
            "mb_per_s": round(py_rate, 3),
            "speedup_vs_python": 1.0,
            "scaling_efficiency": 1.0,
        }
    ]
    one_thread_rate = None
    for count in threads:
        seconds = time_cpu(lambda count=count: segment_steps(corpus, count), repeats=args.repeats)
        rate = corpus_mb / seconds
        one_thread_rate = one_thread_rate or rate
        rows.append(
            {
                **env,
                "benchmark": "segment",
                "provider": "cpp",
                "threads": count,
                "mb": round(corpus_mb, 2),
                "seconds": round(seconds, 4),
                "mb_per_s": round(rate, 2),
                "speedup_vs_python": round(rate / py_rate, 1),
                "scaling_efficiency": round(rate / (count * one_thread_rate), 3),
            }
        )

    results = args.results_dir
    append_csv(results / "segment.csv", rows)
    columns = ["provider", "threads", "mb", "mb_per_s", "speedup_vs_python", "scaling_efficiency"]
    table = markdown_table(rows, columns)
    summary = (
        f"# Step segmentation throughput\n\n"
        f"{env['date']}, commit {env['commit']}, CPU: {env['cpu']} ({env['cpus']} CPUs available), "
        f"Python {env['python']}.\n\nReal traces from shared/data ({len(base)} texts, "
        f"{utf8_mb(base):.1f} MB) replicated to {corpus_mb:.0f} MB for C++; the Python reference "
        f"runs on the first {sample_mb:.1f} MB. MB = UTF-8 megabytes, median of {args.repeats} "
        f"runs.\n\n{table}\n\nRerun: `python -m bench segment` (or `cdfast bench segment`).\n"
    )
    (results / "segment.md").write_text(summary, encoding="utf-8")
    bar_plot(
        results / "segment.png",
        [f"{r['provider']} x{r['threads']}" for r in rows],
        [r["mb_per_s"] for r in rows],
        "MB/s (log)",
        f"step segmentation, {env['cpu']}",
    )
    print(table)
    return rows
