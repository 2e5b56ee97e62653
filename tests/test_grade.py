"""General-domain grading: every grader on the real Qwen3-8B set's own golds, its wrong answers,
and the published per-type counts of that set's replies."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from cd_fast.data import TraceReader
from cd_fast.eval.grade import CHECKS, GRADERS, grade_record, stated_answer


def _items(qwen3) -> list[dict]:
    return json.loads(qwen3.items.read_text())


def _satisfying(check: str, params: dict) -> str:
    """A reply that meets the constraint, written from its parameters alone."""
    if check == "word_count":
        return " ".join(["word"] * params["n"])
    if check == "repeat_word":
        return " ".join([params["word"]] * params["n"])
    if check == "upper_csv":
        colours = ["RED", "BLUE", "GREEN", "YELLOW", "BLACK", "WHITE", "PINK", "GREY", "CYAN"]
        return ",".join(colours[: params["n"]])
    if check == "json_keys":
        return json.dumps(dict.fromkeys(params["keys"], 1))
    if check == "exact_chars":
        return params["char"] * params["n"]
    if check == "desc_range":
        return ",".join(str(n) for n in range(params["hi"], params["lo"] - 1, -1))
    if check == "start_end":
        return f"{params['start']} clouds gather over the quiet hills {params['end']}."
    if check == "forbidden_letter":
        words = ["storm", "wind", "rain", "cloud", "gust", "moon", "sky", "dusk", "hot", "dry"]
        words += ["big", "cold", "dim", "fog", "hill", "tall", "fun"]
        return " ".join(w for w in words if params["letter"] not in w)
    raise AssertionError(f"no satisfying reply for {check}")


def _violating(check: str, params: dict) -> str:
    return {
        "word_count": " ".join(["word"] * (params.get("n", 1) + 1)),
        "repeat_word": " ".join([params.get("word", "x")] * (params.get("n", 1) + 1)),
        "upper_csv": "Red,Blue",
        "json_keys": json.dumps({k: 2 for k in params.get("keys", ["a"])}),
        "exact_chars": "x",
        "desc_range": "1,2,3",
        "start_end": f"{params.get('end', 'x')} and {params.get('start', 'y')}",
        "forbidden_letter": f"a tiny {params.get('letter', 'e')}",
    }[check]


def test_every_grader_accepts_its_own_golds_and_refuses_wrong_answers(qwen3):
    items = _items(qwen3)
    seen = Counter()
    for item in items:
        grader = item["grader"]
        seen[grader] += 1
        if grader == "constraint":
            params = item["params"]
            assert grade_record(item, _satisfying(item["check"], params)), item["id"]
            assert not grade_record(item, _violating(item["check"], params)), item["id"]
            # The reasoning before </think> is not graded; code fences are dropped.
            fenced = f"<think>let me think</think>\n```\n{_satisfying(item['check'], params)}\n```"
            assert grade_record(item, fenced), item["id"]
            continue
        gold = item["answer"]
        for reply in (f"Answer: {gold}", f"Some working.\n\n**Answer:** {gold}.", gold):
            assert grade_record(item, reply), (item["id"], reply)
        for alias in item["accept"]:
            assert grade_record(item, f"Answer: {alias}"), (item["id"], alias)
        if grader == "numeric":
            wrong = f"{float(gold.replace(',', '')) + 1:g}"
        elif grader == "text":
            wrong = "Nobody"
        else:
            wrong = next(k for k in item["options"] if k != gold)
        assert not grade_record(item, f"Answer: {wrong}"), (item["id"], wrong)
    assert set(seen) == {"numeric", "text", "choice", "constraint"}
    assert {item["check"] for item in items if "check" in item} <= set(CHECKS)


def test_the_readers_carry_the_grading_fields_and_replies_grade_as_published(qwen3):
    """Graded on their own records (read through the join with items.json), Qwen3-8B's replies
    give the per-type counts the set's authors published (thinking-traces results/summary.json:
    think-on 39, 35, 40, 31, 36 of 40)."""
    counts: Counter = Counter()
    for trace in TraceReader(qwen3.traces, prompts=qwen3.items):
        assert trace.meta["grader"] in GRADERS
        if trace.meta["grader"] == "constraint":
            assert trace.meta["check"] and isinstance(trace.meta["params"], dict)
        if trace.meta["grader"] == "choice":
            assert trace.meta["options"]
        counts[trace.meta["type"]] += grade_record(trace, trace.answer or "")
    assert counts == {"arith": 39, "deduct": 35, "recall": 40, "instruct": 31, "overthink": 36}


@pytest.mark.parametrize(
    ("record", "reply", "expected"),
    [
        (
            {"gold": "C", "grader": "choice", "options": ["red", "green", "blue"]},
            "\\boxed{C}",
            True,
        ),
        ({"gold": "C", "grader": "choice", "options": ["red", "green", "blue"]}, "(C) blue", True),
        ({"gold": "C", "grader": "choice", "options": ["red", "green", "blue"]}, "Answer: C", True),
        (
            {"gold": "C", "grader": "choice", "options": ["red", "green", "blue"]},
            "It is blue",
            True,
        ),
        (
            {"gold": "C", "grader": "choice", "options": ["red", "green", "blue"]},
            "Answer: B",
            False,
        ),
        (
            {"gold": "C", "grader": "choice", "options": ["red", "green", "blue"]},
            "red or blue",
            False,
        ),
        (
            {"gold": "C", "grader": "choice", "options": ["red", "green", "blue"]},
            "A blue one",
            True,
        ),
        (
            {"gold": "A", "grader": "choice", "options": ["red", "green", "blue"]},
            "A blue one",
            False,
        ),
        ({"gold": "B", "grader": "choice", "options": ["red", "green", "blue"]}, "Option B", True),
        ({"gold": "blue", "grader": "choice", "options": {"A": "red", "B": "blue"}}, "B", True),
        ({"gold": "Brasilia", "grader": "text"}, "Answer: Brasília.", True),
        ({"gold": "Won", "grader": "text", "accept": ["Korean won"]}, "Answer: Korean won", True),
        ({"gold": "Paris", "grader": "text"}, "Answer: Lyon, not Paris as many believe", True),
        ({"gold": "Paris", "grader": "text"}, "Answer: " + "Lyon is " * 10 + "not Paris", False),
        ({"gold": "12", "grader": "numeric"}, "Answer: twelve", True),
        ({"gold": "1250", "grader": "numeric"}, "Answer: 1,250 boxes", True),
        ({"gold": "0.75", "grader": "numeric"}, "Answer: 3/4", True),
        ({"gold": "\\frac{3}{4}", "grader": "numeric"}, "\\boxed{\\frac{3}{4}}", True),
        ({"gold": "\\frac{3}{4}", "grader": "numeric"}, "\\boxed{\\frac{3}{5}}", False),
        ({"gold": "\\frac{1}{2}"}, "so \\boxed{0.5}", True),  # no grader: math-verify
        ({"gold": "", "grader": "text"}, "Answer: anything", False),
    ],
)
def test_grader_formats(record, reply, expected):
    assert grade_record(record, reply) is expected


def test_a_record_in_the_trace_layout_reads_its_grading_fields_from_meta():
    from cd_fast.data import Trace

    trace = Trace(
        "q1", "Name 2 colours in capitals.", "", gold=None,
        meta={"grader": "constraint", "check": "upper_csv", "params": {"n": 2}},
    )  # fmt: skip
    assert grade_record(trace, "RED,BLUE") and not grade_record(trace, "red,blue")
    assert grade_record({"gold": "7"}, "Answer: 7", grader="numeric")  # --grader overrides
    assert stated_answer("<think>Answer: 3</think>The answer is 5.") == "5"


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"gold": "1", "grader": "vibes"}, "unknown grader 'vibes'"),
        ({"grader": "constraint", "check": "rhymes"}, "unknown check 'rhymes'"),
        ({"grader": "constraint", "check": "word_count", "params": {"m": 3}}, "bad params"),
    ],
)
def test_bad_grading_fields_are_one_clear_error(record, message):
    with pytest.raises(ValueError, match=message):
        grade_record(record, "some reply")
