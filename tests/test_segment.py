"""Step segmentation: rules, C++ == Python reference, real traces, unicode, threads, errors."""

import itertools
import json
import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cd_fast.segment import SegmentConfig, segment_steps, segment_steps_py, split_steps

IMPLEMENTATIONS = {
    "cpp": lambda texts, config=None: segment_steps(texts, 1, config=config),
    "python": lambda texts, config=None: segment_steps_py(texts, config=config),
}


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def segment(request):
    return IMPLEMENTATIONS[request.param]


def steps_of(segment, text, **config):
    config = SegmentConfig(**config) if config else None
    return split_steps(text, segment([text], config)[0])


def assert_covers(text, offsets):
    assert offsets.dtype == np.int64 and offsets.ndim == 2 and offsets.shape[1] == 2
    if not text:
        assert offsets.shape == (0, 2)
        return
    assert offsets[0, 0] == 0 and offsets[-1, 1] == len(text)
    assert (offsets[1:, 0] == offsets[:-1, 1]).all()
    assert (offsets[:, 1] > offsets[:, 0]).all()
    assert "".join(split_steps(text, offsets)) == text


def assert_same(texts, config=None):
    native = segment_steps(texts, 1, config=config)
    reference = segment_steps_py(texts, config=config)
    for text, a, b in zip(texts, native, reference, strict=True):
        assert a.shape == b.shape and (a == b).all(), (text, a.tolist(), b.tolist())
        assert_covers(text, a)


# ---- rules, on both implementations ----


def test_sentences_and_paragraphs(segment):
    text = (
        "First we find the total number of apples. Then we divide it by four!\n\n"
        "Is that really right? The quotient is seven."
    )
    assert steps_of(segment, text) == [
        "First we find the total number of apples. ",
        "Then we divide it by four!\n\n",
        "Is that really right? ",
        "The quotient is seven.",
    ]


def test_no_split_inside_numbers_or_after_abbreviations(segment):
    text = (
        "The value is 3.14 and we have 1,000 apples, e.g. red ones vs. green ones, etc. "
        "And that is all we need here."
    )
    assert steps_of(segment, text) == [
        "The value is 3.14 and we have 1,000 apples, e.g. red ones vs. green ones, etc. "
        "And that is all we need here."
    ]


def test_no_split_inside_math(segment):
    for math in ("$x = 1. Then y = 2.$", "$$a. B. c$$", "\\(p. Q\\)", "\\[z.\n\nW\\]"):
        text = f"We compute {math} and then carry on with the rest. Next step is here now."
        assert steps_of(segment, text) == [
            f"We compute {math} and then carry on with the rest. ",
            "Next step is here now.",
        ], math


def test_currency_is_not_math(segment):
    text = "Eggs cost $2 each and milk costs $3. Then the total for both is five dollars."
    assert steps_of(segment, text) == [
        "Eggs cost $2 each and milk costs $3. ",
        "Then the total for both is five dollars.",
    ]


def test_no_split_inside_code_fences(segment):
    code = "```python\nx = 1. Wait\n\ny = 2\n```\n"
    text = f"Here is the code to run:\n{code}After the code we continue."
    assert steps_of(segment, text) == [
        "Here is the code to run:\n",
        code,
        "After the code we continue.",
    ]


def test_unclosed_fence_protects_to_the_end(segment):
    text = "Here is the code to run:\n```\nx = 1. Wait here.\n\nMore code. Here."
    assert steps_of(segment, text) == [
        "Here is the code to run:\n",
        "```\nx = 1. Wait here.\n\nMore code. Here.",
    ]


def test_markers_open_steps_without_punctuation(segment):
    text = "so the total is 670 Wait, is that right? I should check the sum again."
    assert steps_of(segment, text) == [
        "so the total is 670 ",
        "Wait, is that right? ",
        "I should check the sum again.",
    ]


def test_numbered_list_items_stay_whole(segment):
    text = "Plan:\n1. Count all the boxes first.\n2. Subtract the removed ones."
    assert steps_of(segment, text) == [
        "Plan:\n1. Count all the boxes first.\n",
        "2. Subtract the removed ones.",
    ]


def test_short_fragments_merge_by_role(segment):
    # "Hmm." opens what follows; "Yes." closes what precedes.
    text = "The answer is 670 boxes. Yes. Hmm. Let me check that again carefully."
    assert steps_of(segment, text) == [
        "The answer is 670 boxes. Yes. ",
        "Hmm. Let me check that again carefully.",
    ]


def test_min_chars_and_markers_are_configurable(segment):
    text = "Ok. Fine. Done. Zap then more words here."
    assert len(steps_of(segment, text)) == 1
    assert steps_of(segment, text, min_chars=0) == [
        "Ok. ",
        "Fine. ",
        "Done. ",
        "Zap then more words here.",
    ]
    marked = "the first part of it Zap the second part of it"
    assert len(steps_of(segment, marked)) == 1
    assert steps_of(segment, marked, markers=("Zap",)) == [
        "the first part of it ",
        "Zap the second part of it",
    ]


def test_unicode_offsets_are_str_indices(segment):
    text = "数学很有趣。我们来算一下吧。Emoji 😀👨‍👩‍👧 are fun. Next: e\u0301t\u00e9 déjà vu here."
    steps = steps_of(segment, text, min_chars=4)
    assert steps == [
        "数学很有趣。",
        "我们来算一下吧。",
        "Emoji 😀👨‍👩‍👧 are fun. ",
        "Next: e\u0301t\u00e9 déjà vu here.",
    ]


def test_never_starts_a_step_on_a_combining_mark(segment):
    text = "A sentence that ends here. \u0301combining mark after the space. More text here."
    for start, _ in segment([text])[0].tolist():
        assert start == 0 or text[start] != "\u0301"


def test_empty_and_whitespace(segment):
    assert segment([""])[0].shape == (0, 2)
    assert segment(["   \n\n  "])[0].tolist() == [[0, 7]]
    assert segment(["\n\nLeading blank lines then a sentence."])[0].tolist() == [[0, 38]]


# ---- C++ == Python ----

FRAGMENTS = [
    "Wait",
    "But wait",
    "Hmm",
    "Let me check",
    "Alternatively",
    "So",
    "Therefore",
    "Step 2:",
    "Actually",
    ". ",
    "! ",
    "? ",
    ".",
    ",",
    " ",
    "  ",
    "\n",
    "\n\n",
    "\t",
    "\u00a0",
    "\u3000",
    "$",
    "$$",
    "\\(",
    "\\)",
    "\\[",
    "\\]",
    "\\$",
    "```",
    "3.14",
    "1,000",
    "42",
    "1. ",
    "2) ",
    "e.g.",
    "i.e.",
    "etc.",
    "vs.",
    "Dr.",
    "x = 5",
    '"',
    "”",
    ")",
    "*",
    "the",
    "answer",
    "and",
    "数学",
    "。",
    "！",
    "？",
    "😀",
    "👨‍👩‍👧",
    "e\u0301",
    "\u0301",
    "\u200d",
    "\ufe0f",
    "é",
    "ß",
]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=6)), max_size=60).map("".join),
    st.integers(min_value=0, max_value=24),
)
def test_cpp_equals_python_on_generated_text(text, min_chars):
    assert_same([text], SegmentConfig(min_chars=min_chars))


def test_cpp_equals_python_on_every_range_boundary():
    from cd_fast import segment as ref

    chars = []
    for table in (ref._SPACE_RANGES, ref._EXTEND_RANGES, ref._NON_WORD_RANGES):
        for lo, hi in table:
            chars += [lo - 1, lo, hi, hi + 1]
    texts = [f"A sentence here. {chr(c)}So next. Wait{chr(c)} then. x" for c in chars if c > 0]
    assert_same(texts, SegmentConfig(min_chars=0))


def real_texts(shared_data):
    texts = []
    for path in sorted(shared_data.rglob("*.jsonl")):
        for line in path.open(encoding="utf-8"):
            record = json.loads(line)
            texts += [v for v in record.values() if isinstance(v, str) and len(v) > 20]
    return texts


def test_cpp_equals_python_on_every_real_trace(shared_data):
    texts = real_texts(shared_data)
    assert len(texts) > 10_000
    assert_same(texts)


def test_real_trace_excerpt_has_hand_checked_steps(shared_data):
    path = shared_data / "qwen3-8b-thinking" / "qwen3-8b__think-on.jsonl"
    record = next(
        json.loads(line) for line in path.open() if "a printer that produces pages" in line
    )
    excerpt = record["thinking"][:932]
    assert excerpt.endswith("Let me check the problem again.\n\n")
    assert steps_of(IMPLEMENTATIONS["cpp"], excerpt) == [
        "Okay, let's see. ",
        "The problem is about a printer that produces pages, but there's a jam that wastes some "
        "pages. ",
        "I need to figure out how many good pages were produced in total. ",
        "Let me break it down step by step.\n\n",
        "First, the printer works for 7 minutes at a rate of 42 pages per minute. ",
        "So, I should calculate the total pages produced during those 7 minutes. ",
        "Let me do that multiplication: 42 pages/minute times 7 minutes. ",
        "Hmm, 42 times 7. ",
        "Let me compute that. ",
        "40 times 7 is 280, and 2 times 7 is 14, so adding those together gives 280 + 14 = 294 "
        "pages. ",
        "So, in the first part, the printer made 294 pages.\n\n",
        "Then, there's a jam that wastes 24 pages. ",
        "Wait, does that mean 24 pages are lost or discarded? ",
        "So, those pages aren't counted as good pages. ",
        "So, the total good pages would be the initial pages minus the wasted ones? ",
        "Or is the jam happening after producing some pages, and then it produces more? ",
        "Let me check the problem again.\n\n",
    ]


# ---- batch API ----


def test_threads_give_identical_results(shared_data):
    texts = real_texts(shared_data)[:3000]
    one = segment_steps(texts, 1)
    for threads in (0, 2, 3, 8):
        many = segment_steps(texts, threads)
        assert all((a == b).all() and a.shape == b.shape for a, b in zip(one, many, strict=True))


def test_bad_input_errors():
    with pytest.raises(TypeError, match=r"texts\[2\] is int, expected str"):
        segment_steps(["a", "b", 3])
    with pytest.raises(TypeError, match=r"texts\[1\] is bytes"):
        segment_steps_py(["a", b"b"])
    with pytest.raises(TypeError, match="single string"):
        segment_steps("not a list")
    with pytest.raises(ValueError, match="threads"):
        segment_steps(["a"], -1)
    with pytest.raises(ValueError, match="min_chars"):
        SegmentConfig(min_chars=-1)
    with pytest.raises(ValueError, match="markers"):
        SegmentConfig(markers=("",))
    with pytest.raises(ValueError, match="abbreviations"):
        SegmentConfig(abbreviations=("et al.",))


def test_accepts_any_iterable_of_str():
    texts = ("One sentence here. Another one there.", "x")
    expected = segment_steps(list(texts))
    for given_texts in (texts, iter(texts)):
        got = segment_steps(given_texts)
        assert [g.tolist() for g in got] == [e.tolist() for e in expected]


def test_gil_is_released_during_segmentation():
    """While a worker thread is inside segment_steps, this thread keeps running Python: with the
    GIL held, its timeline would show one gap as long as the whole call."""
    text = "Wait, let me check this sentence again. So the total is 3.14 here.\n\n" * 80_000
    texts = [text] * 8
    call = {}

    def worker():
        call["start"] = time.perf_counter()
        segment_steps(texts, 1)
        call["end"] = time.perf_counter()

    thread = threading.Thread(target=worker)
    stamps = []
    thread.start()
    while thread.is_alive():
        stamps.append(time.perf_counter())
    thread.join()
    duration = call["end"] - call["start"]
    assert duration > 0.05, "corpus too small to measure"
    inside = [call["start"], *[t for t in stamps if call["start"] < t < call["end"]], call["end"]]
    longest_gap = max(b - a for a, b in itertools.pairwise(inside))
    assert longest_gap < 0.5 * duration, (longest_gap, duration)
