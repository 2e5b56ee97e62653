"""The demo's generated data, and the whole demo pipeline at its smallest size."""

from __future__ import annotations

import json
import re
from pathlib import Path

from cd_fast.demo import make_dataset
from cd_fast.demo.data import FRUITS
from cd_fast.eval import grade_record
from cd_fast.formats import contains_answer

REPO = Path(__file__).resolve().parents[1]


def test_generated_problems_are_verifiable_and_verbose():
    problems = make_dataset(200, seed=3)
    assert [p.trace for p in make_dataset(200, seed=3)] == [p.trace for p in problems]
    assert [p.trace for p in make_dataset(200, seed=4)] != [p.trace for p in problems]
    math = [p for p in problems if p.meta["domain"] == "math"]
    general = [p for p in problems if p.meta["domain"] == "general"]
    assert 0.15 < len(general) / len(problems) < 0.35
    for problem in math:
        # replay the question's operations: the gold answer is what they give
        start = int(re.match(r"\w+ has (\d+)", problem.question).group(1))
        value = start
        for verb, amount in re.findall(r"(gives away|finds|buys) (\d+)", problem.question):
            value += -int(amount) if verb == "gives away" else int(amount)
        assert problem.gold == str(value) and value >= 0
        assert contains_answer(problem.trace, problem.gold)
        assert grade_record(problem, problem.answer)
    for problem in general:
        # the person asked about, their fruit in the question, its colour the gold
        name = re.search(r"What colour is the fruit (\w+) has", problem.question).group(1)
        fruit = re.search(rf"{name} has a (\w+)", problem.question).group(1)
        assert problem.gold == FRUITS[fruit] and problem.meta["grader"] == "text"
        assert grade_record(problem, problem.answer)
        assert not grade_record(problem, "Answer: " + ("red" if problem.gold != "red" else "blue"))
    text = " ".join(p.trace for p in math)
    assert "double-check" in text and "Hmm, maybe" in text and "verify" in text


def test_demo_runs_end_to_end_and_reports(micro_demo, cdfast, tmp_path):
    out, done = micro_demo.out, micro_demo.done
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "sweep.json").read_text())
    runs = results["runs"]
    compressed = ("token-surprisal@0.5", "step-value-flow@0.5")
    assert set(runs) == {"original", *compressed}
    assert results["domains"] == ["general", "math"] and results["size"] == "micro"
    for name, run in runs.items():
        assert f"| {name} |" in done.stdout
        assert Path(run["model"], "config.json").is_file()
        assert 0 <= run["accuracy"] <= 1 and run["mean_output_tokens"] > 0
        assert set(run["by_domain"]) == {"general", "math"}
        assert sum(run["train_tokens_by_domain"].values()) == run["train_label_tokens"]
        assert (out / f"eval-{name}" / "predictions.jsonl").is_file()
    for name in compressed:
        assert runs[name]["train_label_tokens"] < runs["original"]["train_label_tokens"]
        # whole paragraphs of 240 short traces: near the budget, not on it
        assert abs(runs[name]["ratio_tokens"] - 0.5) <= 0.05 and runs[name]["budget"] == 0.5
        # the same traces per step: a smaller step, about as many steps as the original's
        assert runs[name]["tokens_per_step"] < 0.7 * runs["original"]["tokens_per_step"]
        steps = runs["original"]["train_steps"]
        assert abs(runs[name]["train_steps"] - steps) <= 0.2 * steps + 2, (name, runs[name])
    assert (out / "report.md").is_file() and list(out.glob("report-0-*.png"))
    explained = [json.loads(x) for x in (out / "data" / "step-value-flow@0.5.jsonl").open()]
    assert all(r["meta"]["compression"]["explain"]["dropped"] for r in explained)
    page = cdfast("report", "--html", out, "--traces", "2", "-o", tmp_path / "p.html")
    assert page.returncode == 0 and "(4 traces)" in page.stdout, page.stderr
    # step pruning by value flow kept the computation and dropped the detours first
    roles = json.loads((out / "data" / "step-value-flow@0.5.summary.json").read_text())["roles"]
    assert roles["deduction"]["kept"] > roles["uncertainty"]["kept"], roles
    pairs = {(r["a"], r["b"], r["granularity"]) for r in results["agreement"]}
    assert ("value-flow", "role", "sentence") in pairs and len(pairs) == 6

    report = cdfast("report", out, "-o", tmp_path / "r.md", cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-2000:]
    text = (tmp_path / "r.md").read_text()
    assert "accuracy / 1k tokens" in text and "| asked budget |" in text
    assert "### math" in text and "### general" in text and "keeps the most accuracy" in text
    assert "step roles" in text and "| step-value-flow@0.5 |" in text
    assert "Criterion agreement" in text and "| value-flow / role |" in text
    for slug in ("all", "math", "general"):
        assert f"r-0-{slug}.png" in text
        assert (tmp_path / f"r-0-{slug}.png").stat().st_size > 1000


def test_demo_on_user_traces(shared_data, cdfast, tmp_path):
    traces = tmp_path / "gsm8k.jsonl"
    lines = (shared_data / "gsm8k" / "train.jsonl").read_text().splitlines()[:80]
    traces.write_text("\n".join(lines) + "\n")
    out = tmp_path / "demo"
    done = cdfast(
        *("demo", "--size", "micro", "--traces", traces, "-o", out, "--device", "cpu"),
        *("--budgets", "0.5"),
        env={"TRITON_INTERPRET": None},
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "sweep.json").read_text())
    assert results["train_records"] + results["eval_records"] == 80
    evaluated = [json.loads(x) for x in (out / "eval-original" / "predictions.jsonl").open()]
    held_out = [json.loads(line)["answer"].split("####")[1].strip() for line in lines[-16:]]
    assert [r["gold"] for r in evaluated] == held_out  # the last records are held out
