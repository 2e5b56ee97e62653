"""The `cdfast` console script, run as a user runs it (a subprocess)."""

import json
import shutil

import pytest

CDFAST = shutil.which("cdfast")


def test_help_teaches_every_command(cdfast):
    result = cdfast("--help")
    assert result.returncode == 0
    for command in ("segment", "bench"):
        assert command in result.stdout
        sub = cdfast(command, "--help")
        assert sub.returncode == 0 and "example" in sub.stdout.lower(), sub.stdout


def test_segment_real_traces(shared_data, tmp_path, cdfast):
    folder = shared_data / "qwen3-8b-thinking"
    out = tmp_path / "steps.jsonl"
    result = cdfast(
        "segment",
        folder / "qwen3-8b__think-on.jsonl",
        "--prompts",
        folder / "items.json",
        "-o",
        out,
        "--threads",
        "2",
    )
    assert result.returncode == 0, result.stderr
    assert "segmented 200 records" in result.stdout and "per record" in result.stdout
    assert "MB/s" in result.stdout
    records = [json.loads(line) for line in out.open()]
    assert len(records) == 200
    for record in records:
        steps = record["steps"]
        assert "".join(record["trace"][a:b] for a, b in steps) == record["trace"]
    assert sum(len(r["steps"]) for r in records) / 200 > 10


def test_segment_malformed_line_fails_then_skips(tmp_path, cdfast):
    source = tmp_path / "in.jsonl"
    source.write_text(
        '{"id": "a", "question": "q", "trace": "One sentence here. Another sentence there."}\n'
        '{"id": "b", "question": "q", "trace": \n'
        '{"id": "c", "question": "q", "trace": "Third record is fine as well."}\n'
    )
    out = tmp_path / "out.jsonl"
    failed = cdfast("segment", source, "-o", out)
    assert failed.returncode == 2
    assert f"{source}:line 2: invalid JSON" in failed.stderr
    assert len(failed.stderr.strip().splitlines()[-1]) < 300
    assert not out.exists()

    skipped = cdfast("segment", source, "-o", out, "--skip-invalid")
    assert skipped.returncode == 0, skipped.stderr
    assert "skipped 1 invalid record" in skipped.stdout and "line 2" in skipped.stdout
    assert [json.loads(line)["id"] for line in out.open()] == ["a", "c"]


def test_segment_rules_from_files(tmp_path, cdfast):
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"question": "q", "trace": "alpha beta Zap gamma delta"}) + "\n")
    markers = tmp_path / "markers.txt"
    markers.write_text("Zap\n")
    out = tmp_path / "out.jsonl"
    result = cdfast("segment", source, "-o", out, "--markers", markers, "--min-chars", "0")
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text())["steps"] == [[0, 11], [11, 26]]


def test_bad_arguments_exit_nonzero(tmp_path, cdfast):
    missing = cdfast("segment", tmp_path / "nope.jsonl", "-o", tmp_path / "o.jsonl")
    assert missing.returncode == 2 and "no such file" in missing.stderr
    fmt = tmp_path / "data.csv"
    fmt.write_text("a,b\n")
    unknown = cdfast("segment", fmt, "-o", tmp_path / "o.jsonl")
    assert unknown.returncode == 2 and "unknown format" in unknown.stderr
    assert cdfast("segment").returncode == 2


@pytest.mark.slow
def test_bench_segment_writes_results(shared_data, tmp_path, cdfast):
    result = cdfast(
        "bench",
        "--results-dir",
        tmp_path,
        "--data-dir",
        shared_data,
        "segment",
        "--target-mb",
        "2",
        "--python-mb",
        "0.2",
        "--threads",
        "1",
        "2",
        "--repeats",
        "1",
    )
    assert result.returncode == 0, result.stderr
    lines = (tmp_path / "segment.csv").read_text().splitlines()
    header = lines[0].split(",")
    for column in ("date", "commit", "cpu", "provider", "threads", "mb_per_s", "speedup_vs_python"):
        assert column in header
    assert len(lines) == 4  # python reference + 2 thread counts
    assert "python-reference" in (tmp_path / "segment.md").read_text()
