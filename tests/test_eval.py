"""Grading on the real GSM8K and MATH-500 data, and `cdfast eval` with a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cd_fast.data import TraceReader
from cd_fast.eval import EvalConfig, evaluate, grade, metrics

REPO = Path(__file__).resolve().parents[1]


def test_gsm8k_gold_solutions_grade_right_and_wrong_answers_do_not(shared_data):
    rows = [json.loads(x) for x in (shared_data / "gsm8k" / "test.jsonl").open()]
    golds = [r["answer"].split("####")[1].strip() for r in rows]
    assert all(grade(r["answer"], g) for r, g in zip(rows, golds, strict=True))
    wrong = [str(int(g.replace(",", "")) + 1) for g in golds]
    assert not any(grade(r["answer"], w) for r, w in zip(rows, wrong, strict=True))


def test_math500_reference_solutions_grade_correct(shared_data):
    rows = [json.loads(x) for x in (shared_data / "math500" / "test.jsonl").open()]
    correct = sum(grade(r["solution"], r["answer"]) for r in rows)
    assert correct >= 0.95 * len(rows), correct


@pytest.mark.parametrize(
    ("prediction", "gold", "expected"),
    [
        (r"so the answer is $\boxed{\frac{1}{2}}$", "0.5", True),
        ("Answer: 1,234", "1234", True),
        ("<think>\nWait, maybe 12? No.\n</think>\n\nThe total is 7.", "7", True),
        ("<think>\nIt is 7.\n</think>\n\nThe total is 8.", "7", False),
        ("work...\n#### 72", "72", True),
        (r"$\boxed{3\sqrt{13}}$", r"3\sqrt{13}", True),
        (r"$\boxed{3\sqrt{13}}$", "3", False),
        ("", "7", False),
        ("7", "", False),
    ],
    ids=[
        "boxed-fraction",
        "answer-line-thousands",
        "after-think",
        "after-think-wrong",
        "gsm8k-hashes",
        "latex-root",
        "latex-root-partial",
        "empty-prediction",
        "empty-gold",
    ],
)
def test_grade_formats(prediction, gold, expected):
    assert grade(prediction, gold) is expected


def test_metrics_and_baseline_ratios():
    run = [
        {"correct": c, "output_tokens": n, "truncated": t}
        for c, n, t in [(True, 50, False), (False, 150, True)]
    ]
    training = {"asked_budget": 0.3, "training_ratio": 0.31}
    result = metrics(run, {"accuracy": 0.6, "mean_output_tokens": 400.0}, training)
    assert result["accuracy"] == 0.5 and result["mean_output_tokens"] == 100.0
    assert result["median_output_tokens"] == 100 and result["truncation_rate"] == 0.5
    assert result["accuracy_per_1k_tokens"] == 5.0
    assert result["vs_baseline"] == {
        "accuracy_retained": 0.8333,
        "output_length_reduction": 4.0,
        "per_token_efficiency_gain": 3.333,
        "asked_budget": 0.3,
        "training_ratio": 0.31,
        "inference_length_ratio": 0.25,
    }


@pytest.fixture(scope="module")
def tiny_student(tiny_models) -> Path:
    """A random-init tiny Qwen2 with SmolLM2's real tokenizer and chat template."""
    return tiny_models["qwen2"]


def gsm8k(shared_data, count):
    return [
        t
        for _, t in zip(
            range(count), TraceReader(shared_data / "gsm8k" / "test.jsonl"), strict=False
        )
    ]


def test_eval_with_a_tiny_model_grades_and_resumes(tiny_student, shared_data, tmp_path):
    config = EvalConfig(model=str(tiny_student), max_new_tokens=6, batch_size=4, device="cpu")
    records = gsm8k(shared_data, 6)
    first = evaluate(records[:4], tmp_path / "run", config)
    assert first["records"] == 4
    lines = (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()
    with pytest.raises(ValueError, match="--resume"):
        evaluate(records, tmp_path / "run", config)
    result = evaluate(records, tmp_path / "run", config, resume=True)
    rows = [
        json.loads(x) for x in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()
    ]
    assert [r["id"] for r in rows] == [r.id for r in records]
    assert (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()[:4] == lines
    assert result["records"] == 6
    for row, record in zip(rows, records, strict=True):
        assert row["gold"] == record.gold
        assert row["correct"] == grade(row["prediction"], record.gold)
        assert 0 < row["output_tokens"] <= 6
    assert 0.0 <= result["truncation_rate"] <= 1.0
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["accuracy"] == result["accuracy"] and saved["model"] == str(tiny_student)


def test_cli_eval_and_compare(tiny_student, shared_data, tmp_path, cdfast):

    data = shared_data / "gsm8k" / "test.jsonl"
    common = ["--model", tiny_student, "--limit", "3", "--max-new-tokens", "4", "--device", "cpu"]
    base = cdfast("eval", data, "-o", tmp_path / "base", *common)
    assert base.returncode == 0, base.stderr[-2000:]
    other = cdfast("eval", data, "-o", tmp_path / "other", *common, "--baseline", tmp_path / "base")
    assert other.returncode == 0, other.stderr[-2000:]
    assert "vs_baseline" in json.loads((tmp_path / "other" / "metrics.json").read_text())
    table = cdfast("eval", "--compare", tmp_path / "base", tmp_path / "other")
    assert table.returncode == 0 and "| base |" in table.stdout and "| other |" in table.stdout
    missing = cdfast("eval", data, "-o", tmp_path / "x")
    assert missing.returncode == 2 and "missing model" in missing.stderr
