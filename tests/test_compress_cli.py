"""Compression over HTTP (a real `transformers serve` on loopback) and from the command line."""

import json

from cd_fast.data import write_jsonl
from cd_fast.score.store import write_manifest, write_shard


def test_rewrite_over_http_against_transformers_serve(
    served_smollm2, smollm2_dir, short_traces, cdfast, tmp_path
):
    traces = short_traces
    source = tmp_path / "traces.jsonl"
    write_jsonl(source, traces)
    out = tmp_path / "rewritten.jsonl"
    done = cdfast(
        "compress",
        source,
        "-o",
        out,
        "--method",
        "rewrite",
        "--level",
        "3",
        "--backend",
        "http",
        "--base-url",
        served_smollm2,
        "--rewriter",
        str(smollm2_dir),
        "--tokenizer",
        smollm2_dir,
        "--max-new-tokens",
        "24",
        "--concurrency",
        "2",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in records] == [t.id for t in traces]
    assert all(r["meta"]["compression"]["level"] == 3 and r["trace"].strip() for r in records)
    summary = json.loads((tmp_path / "rewritten.jsonl.summary.json").read_text())
    assert summary["records"] == 3 and summary["seconds"]["generation"] > 0


# ---- the command line ----


def test_cli_prunes_with_stored_scores(scored, mixed_traces, smollm2_dir, cdfast, tmp_path):
    store = tmp_path / "scores"
    store.mkdir()
    write_shard(store, 0, list(scored.values()))
    write_manifest(store, {"version": 1, "total_shards": 1})
    source = tmp_path / "traces.jsonl"
    write_jsonl(source, mixed_traces)
    out = tmp_path / "token.jsonl"
    done = cdfast(
        "compress",
        source,
        "-o",
        out,
        "--method",
        "token",
        "--budget",
        "0.3",
        "--scores",
        store,
        "--tokenizer",
        smollm2_dir,
        "--keep-original",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "ratio (tokens)" in done.stdout and "answers kept" in done.stdout
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(records) == len(mixed_traces)
    assert all(r["meta"]["original_trace"] for r in records)
    summary = json.loads((tmp_path / "token.jsonl.summary.json").read_text())
    assert abs(summary["ratio_tokens"] - 0.3) <= 0.02


def test_cli_resumes_after_a_failure_and_reports_bad_lines(qwen3, smollm2_dir, cdfast, tmp_path):
    lines = qwen3.traces.read_text().splitlines()[:30]
    good = tmp_path / "good.jsonl"
    good.write_text("\n".join(lines) + "\n")
    broken = tmp_path / "broken.jsonl"
    broken.write_text("\n".join([*lines[:19], '{"id": "x", "completion": 5}', *lines[20:]]) + "\n")
    common = [
        "--prompts",
        qwen3.items,
        "--method",
        "truncate",
        "--budget",
        "0.3",
        "--tokenizer",
        smollm2_dir,
        "--batch-size",
        "8",
    ]
    straight = cdfast("compress", good, "-o", tmp_path / "straight.jsonl", *common)
    assert straight.returncode == 0, straight.stderr[-2000:]

    out = tmp_path / "resumed.jsonl"
    failed = cdfast("compress", broken, "-o", out, *common)
    assert failed.returncode == 2
    assert "broken.jsonl:line 20" in failed.stderr and "Traceback" not in failed.stderr
    partial = tmp_path / "resumed.jsonl.partial"
    assert len(partial.read_text().splitlines()) == 16  # two whole batches of 8 were kept
    again = cdfast("compress", broken, "-o", out, *common)
    assert again.returncode == 2 and "--resume" in again.stderr

    resumed = cdfast("compress", good, "-o", out, *common, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert out.read_text() == (tmp_path / "straight.jsonl").read_text()
    assert not partial.exists()

    skipped = cdfast("compress", broken, "-o", tmp_path / "skip.jsonl", *common, "--skip-invalid")
    assert skipped.returncode == 0 and "skipped 1 invalid record" in skipped.stdout
    assert len((tmp_path / "skip.jsonl").read_text().splitlines()) == 29
