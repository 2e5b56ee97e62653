"""Step roles: the tagger on written cases (English and Chinese), against the hand-labelled real
traces in tests/data/roles, the role criteria at a budget, and the role statistics that compress,
--explain, the HTML page and the demo report carry."""

from __future__ import annotations

import itertools
import json
import re

import numpy as np
import pytest

from cd_fast.bench.roles import (
    LABELS,
    criterion_rows,
    kept_by_role,
    labelled_traces,
    tagger_agreement,
)
from cd_fast.compress import compress
from cd_fast.compress import roles as roles_module
from cd_fast.compress.config import CompressConfig
from cd_fast.compress.criteria import METHOD_CRITERIA
from cd_fast.compress.roles import ROLES, role_summary, tag_roles, tag_roles_batch, tag_roles_py
from cd_fast.data import Trace
from cd_fast.segment import segment_steps

QUESTION = "A shop has 12 apples and sells 5. How many apples are left?"
TRACE = "\n".join(
    [
        "Okay, let's see.",
        "The shop has 12 apples and sells 5.",
        "So 12 - 5 = 8, which is what is left over.",
        "Wait, no, that's wrong.",
        "12 - 5 = 7, since 7 + 5 makes 12 again.",
        "Hmm.",
        "Is that right?",
        "Let me double-check: 7 + 5 = 12.",
        "Yes, that checks out.",
        "Alternatively, maybe the question means the apples sold?",
        "So the answer is 7.",
    ]
)


def lines_of(text: str) -> np.ndarray:
    """One sentence per line (the segmenter joins short lines; the tagger is tested alone)."""
    starts = [0] + [i + 1 for i, c in enumerate(text) if c == "\n"]
    return np.array(list(zip(starts, [*starts[1:], len(text)], strict=True)), dtype=np.int64)


def roles_of(text: str, question: str = "", answer: str | None = None) -> list[str]:
    return tag_roles(text, lines_of(text), question, answer).names()


def test_cues_pick_each_role_and_the_abandoned_step():
    roles = tag_roles(TRACE, lines_of(TRACE), QUESTION, "7")
    assert roles.names() == [
        "initialising",  # the opening
        "initialising",  # restates the question
        "deduction",
        "backtracking",
        "deduction",  # the corrected step
        "uncertainty",
        "uncertainty",
        "verification",
        "verification",
        "exploration",
        "conclusion",
    ]
    # the step the backtrack revised is marked abandoned; the corrected one is not
    assert roles.abandoned.tolist()[2] and not roles.abandoned.tolist()[4]
    assert ((roles.confidence > 0) & (roles.confidence <= 1)).all()
    # a check going over known results stays verification without a cue of its own
    recap = (
        "Adding them gives 3 + 4 = 7 apples in the basket.\nSo the answer is 7 apples in all.\n"
        "Now I go over every step once more from the top.\nThree apples and four apples: "
        "3 + 4 = 7.\nAnd 7 is then the total number of apples."
    )
    # (the last statement of the answer is where the answer is read: a conclusion)
    assert roles_of(recap, "Add 3 and 4.", "7")[2:] == ["verification"] * 2 + ["conclusion"]


def test_chinese_cues():
    text = "\n".join(
        [
            "首先，题目要求我们计算篮子里苹果的总数。",
            "三个苹果加四个苹果，3 加 4 等于 8。",
            "等等，不对，我算错了这一步。",
            "嗯。",
            "或者换个方法试试，一个一个地数。",
            "验证一下：7 减 4 等于 3，没错。",
            "所以答案是 7。",
        ]
    )
    assert roles_of(text) == [
        "initialising",
        "deduction",
        "backtracking",
        "uncertainty",
        "exploration",
        "verification",
        "conclusion",
    ]


def test_tagging_is_deterministic_and_covers_the_text():
    steps = segment_steps([TRACE])[0]  # the segmenter's sentences, as compress passes them
    a, b = tag_roles(TRACE, steps, QUESTION, "7"), tag_roles(TRACE, steps, QUESTION, "7")
    assert a.names() == b.names() and np.array_equal(a.confidence, b.confidence)
    assert int(a.chars().sum()) == len(TRACE)
    units = np.array([[0, 60], [60, len(TRACE)]])
    assert len(a.unit_roles(units)) == 2
    assert tag_roles("", np.zeros((0, 2), dtype=np.int64)).names() == []
    # sentences need not cover the text: a cue before the first one marks none of them
    text = "Wait, no, that is wrong. Let me check again. So the answer is 7."
    spans = np.array([[25, 44], [45, len(text)]])
    assert tag_roles(text, spans, "", "7").names() == ["verification", "conclusion"]


def assert_same_roles(native, reference):
    assert native.names() == reference.names()
    assert np.array_equal(native.confidence, reference.confidence)
    assert np.array_equal(native.abandoned, reference.abandoned)


def test_native_tagger_equals_the_python_reference_on_written_cases():
    chinese = "等等。我算错了，应该是7。也许不对吗？验证一下：3 + 4 = 7。所以答案是7。"
    lowered = "İSTANBUL has 1,200.50 kg. Then ١٢ + 3 = 15.\n\n\n   \n\nWAIT, NO. So 15."
    cases = [
        (TRACE, lines_of(TRACE), QUESTION, "7"),
        (TRACE, segment_steps([TRACE])[0], QUESTION, "7"),
        (TRACE, lines_of(TRACE), "", None),
        ("", np.zeros((0, 2), dtype=np.int64), "", None),
        (
            "Wait, no, that is wrong. Let me check again. So the answer is 7.",
            np.array([[25, 44], [45, 64]]),
            "",
            "7",
        ),
        (chinese, segment_steps([chinese])[0], "小明有3个苹果，又买了4个。", "7"),
        # a letter that lowers into two characters, other digits, a whitespace-only sentence
        (
            lowered,
            np.array([[0, 26], [26, 45], [45, 53], [53, 63], [63, len(lowered)]]),
            "How much is 1200.5 and 12?",
            "15",
        ),
    ]
    for text, spans, question, answer in cases:
        native = tag_roles(text, spans, question, answer)
        assert_same_roles(native, tag_roles_py(text, spans, question, answer))
    many = tag_roles_batch(*map(list, zip(*cases, strict=True)), threads=2)
    for found, (text, spans, question, answer) in zip(many, cases, strict=True):
        assert_same_roles(found, tag_roles_py(text, spans, question, answer))


def test_native_tagger_refuses_spans_outside_the_text():
    with pytest.raises(ValueError, match=r"sentences\[0\]\[1\] = \(5, 99\) is not a span"):
        tag_roles("Short text.", np.array([[0, 5], [5, 99]]))
    with pytest.raises(ValueError, match="int64 array of shape"):  # the extension's own check
        roles_module._native_tagger().tag(["abc"], [np.zeros((2, 3))], [""], [""], [-1], 1)


ENGINE_CASES = (
    "so 12 - 5 = 7, since 7 + 5 makes 12.",
    "wait, no, that's wrong",
    "hmm?",
    "is_it x2 or v1.5?",
    "naïve café déjà-vu ÷ 3 × 4",
    "等等，我算错了吗？",
    "the answer is \\boxed{7}",
    "okay, so, alright let's see",
    "",
    " ",
    "end\n",
)


def test_regex_engine_reads_patterns_as_re_does():
    from cd_fast.native import load_extension

    engine = load_extension().Pattern
    patterns = [
        r"a|b",
        r"(?:ab)+c",
        r"[^\W\d_]+",
        r"\bis\b",
        r"x$",
        r"[\W_]*y",
        r"colou?r",
        r"\d[\d,]*(?:\.\d+)?",
        r"(?P<c0>so|then)\b[^?]*\?\s*$",
        r"[？?]\s*$",
        r"[+\-*/×÷]",
        r"(?:okay|ok)[,.!]*\s+",
        r"吗[？?]",
        r"\\boxed",
        r"(?:a|ab)(?:c|bcd)(?:d*)$",
    ]
    for pattern in patterns:
        compiled, ours = re.compile(pattern), engine(pattern)
        for text in (*ENGINE_CASES, "abc", "abbcd", "ababc", "this is it", "x", "yy", "colour"):
            assert ours.match(text) == bool(compiled.match(text)), (pattern, text)
            assert ours.search(text) == bool(compiled.search(text)), (pattern, text)
    for unsupported in (r"(?=a)", r"a{2}", r"(?:a*)*", r"(a)\1", r"(?i)a", r"a.b", r"^a", r"\Z"):
        with pytest.raises(ValueError, match="not supported"):
            engine(unsupported)


def lexicon_patterns() -> list[re.Pattern]:
    cues = [*roles_module._CUES, roles_module._OPENING]
    patterns = [p for cue in cues for p in (cue.head, cue.free) if p is not None]
    return [
        *patterns,
        roles_module._PLAN,
        roles_module._FORWARD,
        roles_module._CONNECTIVE,
        roles_module._INFERENCE,
    ]


def test_role_criteria_are_registered_and_default_to_sentences():
    assert {"role", "role+value-flow", "role+surprisal"} <= set(METHOD_CRITERIA["step"])
    assert CompressConfig(method="step", criterion="role").granularity == "sentence"
    assert CompressConfig(method="step").granularity == "paragraph"
    assert (
        CompressConfig(method="step", criterion="role", granularity="paragraph").granularity
        == "paragraph"
    )
    with pytest.raises(ValueError, match="criterion"):
        CompressConfig(method="token", criterion="role")


@pytest.fixture(scope="module")
def labelled(shared_data):
    return labelled_traces(LABELS, shared_data)


@pytest.fixture(scope="module")
def counter(labelled, tmp_path_factory):
    from cd_fast.demo.tokenizer import train_tokenizer

    texts = [t.trace for t, _ in labelled]
    return train_tokenizer(texts, tmp_path_factory.mktemp("bpe"), vocab_size=2000)


def test_labelled_set_and_rubric_are_complete(labelled):
    assert len(labelled) >= 40
    rubric = (LABELS.parent / "RUBRIC.md").read_text()
    for role in ROLES:
        assert role in rubric
    for trace, spans in labelled:  # the labels cover each trace end to end, in order
        assert spans[0][0] == 0 and spans[-1][1] == len(trace.trace)
        assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
        assert {role for _, _, role in spans} <= set(ROLES)


def test_tagger_agrees_with_the_hand_labels(labelled):
    rows, accuracy = tagger_agreement(labelled)
    by_role = {row["role"]: row for row in rows}
    assert accuracy >= 0.55
    # the reflective roles the criterion drops first are found with few false alarms
    for role in ("backtracking", "uncertainty"):
        assert by_role[role]["recall"] >= 0.6 and by_role[role]["precision"] >= 0.6, by_role[role]
    for role in ("deduction", "verification", "conclusion", "initialising"):
        assert by_role[role]["f1"] >= 0.5, by_role[role]


def test_native_tagger_equals_the_python_reference_on_real_traces(qwen3):
    from cd_fast.data import TraceReader
    from cd_fast.formats import final_answer

    traces = list(TraceReader(qwen3.traces, prompts=qwen3.items))
    texts = [t.trace for t in traces]
    steps = segment_steps(texts)
    questions = [t.question or "" for t in traces]
    answers = [final_answer(t.gold, t.answer, t.trace) for t in traces]
    native = tag_roles_batch(texts, steps, questions, answers)
    for found, args in zip(native, zip(texts, steps, questions, answers, strict=True), strict=True):
        assert_same_roles(found, tag_roles_py(*args))


def test_regex_engine_reads_the_lexicon_as_re_does(labelled):
    from cd_fast.native import load_extension

    sentences = [trace.trace[a:b].lower().strip() for trace, spans in labelled for a, b, _ in spans]
    sentences += [text.lower() for text in TRACE.splitlines()] + list(ENGINE_CASES)
    for pattern in lexicon_patterns():
        ours = load_extension().Pattern(pattern.pattern)
        for sentence in sentences:
            assert ours.match(sentence) == bool(pattern.match(sentence)), (pattern, sentence)
            assert ours.search(sentence) == bool(pattern.search(sentence)), (pattern, sentence)


def test_role_criterion_keeps_deduction_and_drops_reflection(labelled, counter):
    rows = {(r["criterion"], r["granularity"]): r for r in criterion_rows(labelled, counter, 0.3)}
    for criterion in ("role", "role+value-flow"):
        row = rows[criterion, "sentence"]
        assert abs(row["ratio_tokens"] - 0.3) <= 0.02, row
        kept, total = row["answers"].split("/")
        assert kept == total, row  # answers kept as with every step criterion
        assert row["reflective"] <= 0.5 * 0.3, row
    assert rows["role", "sentence"]["deduction"] >= 1.5 * 0.3
    # value flow breaks the ties among deductions less well than the tagger's confidence on
    # these mostly symbolic traces; still far above what the criteria blind to roles keep
    assert rows["role+value-flow", "sentence"]["deduction"] >= 1.4 * 0.3
    # the criteria that know nothing of roles keep hesitation about as readily as deduction
    value_flow = rows["value-flow", "sentence"]
    assert value_flow["deduction"] < 1.5 * 0.3 < 2 * value_flow["reflective"] + 0.3


def test_role_statistics_in_summary_records_explain_and_html(labelled, counter, tmp_path):
    from cd_fast.compress.html import write_html
    from cd_fast.data import write_jsonl

    traces = [t for t, _ in labelled[:6]]
    result = compress(traces, "step", 0.3, counter=counter, criterion="role", explain=True)
    roles = result.summary["roles"]
    assert set(roles) == set(ROLES)
    assert sum(r["before"] for r in roles.values()) == pytest.approx(1, abs=1e-3)
    assert sum(r["after"] for r in roles.values()) == pytest.approx(1, abs=1e-3)
    assert roles["deduction"]["kept"] > roles["uncertainty"]["kept"]
    # the summary adds up the records
    kept = kept_by_role([(t, [[0, len(t.trace), "deduction"]]) for t in traces], result.records)
    assert kept["deduction"] == pytest.approx(result.summary["ratio_chars"], abs=0.05)
    record = result.records[0].meta["compression"]
    assert set(record["roles"]["before"]) == set(ROLES)
    assert all(entry["role"] in ROLES for entry in record["explain"]["dropped"])
    runs = record["explain"]["roles"]
    assert runs[0][0] == 0 and runs[-1][1] == len(record_original(result.records[0]))
    write_jsonl(tmp_path / "role.jsonl", result.records)
    write_html([tmp_path / "role.jsonl"], tmp_path / "role.html", 2)
    page = (tmp_path / "role.html").read_text()
    assert 'class="r-deduction"' in page and "step roles (share of the text" in page
    # a rewrite keeps no spans: its records know the shares before only
    assert role_summary([{role: [10, None] for role in ROLES}])["deduction"]["kept"] is None


def record_original(record: Trace) -> str:
    return record.meta["original_trace"]


def test_cli_prints_role_shares(labelled, counter, tmp_path, cdfast):
    source = tmp_path / "traces.jsonl"
    source.write_text("".join(json.dumps(t.to_dict()) + "\n" for t, _ in labelled[:4]))
    counter.save_pretrained(tmp_path / "tok")
    out = tmp_path / "out.jsonl"
    done = cdfast(
        "compress", source, "-o", out, "--method", "step", "--criterion", "role",
        "--budget", "0.3", "--tokenizer", tmp_path / "tok",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "roles kept" in done.stdout and "deduction" in done.stdout
    summary = json.loads((tmp_path / "out.jsonl.summary.json").read_text())
    assert summary["granularity"] == "sentence" and summary["roles"]["deduction"]["kept"] > 0
