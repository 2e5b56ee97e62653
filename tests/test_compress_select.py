"""Compression building blocks without a model: spans, answers, budgets, configs, the method
registry, the planner's state, stored step scores against other steps."""

import numpy as np
import pytest

from cd_fast.compress import METHODS, CompressConfig, Compressor, adaptive_targets, compress
from cd_fast.compress.rewrite import fill_template, prompt_template
from cd_fast.compress.select import join_spans
from cd_fast.data import Trace
from cd_fast.formats import answer_position, contains_answer
from cd_fast.generate import Generator, Reply
from cd_fast.score.steps import step_scores
from cd_fast.score.store import RecordScores


def test_join_spans_never_fuses_words_or_splits_characters():
    text = "Wait, let me check: héllo wörld 𝔘nicode.\n\nSo x = 42 and y = 7."
    assert join_spans(text, [(0, 4), (6, 9)]) == "Wait let"
    assert join_spans(text, [(20, 25), (26, 31)]) == "héllo wörld"
    assert join_spans(text, [(0, 5), (42, 44)]) == "Wait,\nSo"
    assert join_spans(text, [(32, 33), (33, 39)]) == "𝔘nicode"
    assert join_spans(text, [(6, 9), (0, 4), (2, 8)]) == "Wait, let"  # sorted and merged
    paragraphs = "A one.\n\nB two.\n\nC three."
    # a dropped paragraph leaves its neighbours' own line breaks, not a run of blank lines
    assert join_spans(paragraphs, [(0, 8), (16, 24)]) == "A one.\n\nC three."


def test_join_spans_keeps_grapheme_clusters_whole_and_adds_no_spaces_to_cjk():
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"  # one emoji: man ZWJ woman ZWJ girl
    text = f"家族{family}です。今日は晴れ。e\u0301te"
    start = text.index(family)
    # a token boundary inside the emoji keeps the whole emoji, never a lone ZWJ half
    assert join_spans(text, [(0, 2), (start + 1, start + 3)]) == "家族" + family
    # cuts in text written without spaces join without one
    assert join_spans(text, [(0, 2), (text.index("今"), text.index("今") + 2)]) == "家族今日"
    # a combining accent stays with its letter
    accent = text.index("\u0301")
    assert join_spans(text, [(accent, accent + 1)]) == "e\u0301"


def test_answer_position_matches_whole_numbers_and_answers():
    assert answer_position("1,072 boxes, then 72.", "72") == 18
    assert answer_position("172 and 7.25", "72") is None
    assert answer_position("total 1,072", "1072") == 6
    assert contains_answer(r"so \frac {1}{2} is it", r"\frac{1}{2}")
    assert not contains_answer("no answer here", "Ottawa")
    assert not contains_answer("anything", None)


def test_adaptive_targets_hold_the_ratio_and_favour_hard_traces():
    lengths = np.array([100, 400, 1600, 800, 300])
    difficulty = np.array([1.0, 2.0, 1.5, 0.5, 3.0])
    ratios = adaptive_targets(lengths, difficulty, 0.3)
    assert (ratios * lengths).sum() == pytest.approx(0.3 * lengths.sum(), rel=1e-6)
    assert ratios[4] > ratios[0] and ratios[2] > ratios[3]  # harder, longer: more kept
    assert ratios.min() >= 0.3 / 4 and ratios.max() <= 1.0


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="criterion for token"):
        CompressConfig(method="token", criterion="answer-delta")
    with pytest.raises(ValueError, match="budget must be in"):
        CompressConfig(method="step", budget=1.5)
    with pytest.raises(ValueError, match="match_lengths applies to method truncate"):
        CompressConfig(method="token", match_lengths="x.jsonl")


def test_prompt_templates():
    for level in (1, 2, 3):
        text = fill_template(prompt_template(level), "Q?", r"\boxed{7} {x}", 12)
        assert "Q?" in text and r"\boxed{7} {x}" in text and "12 words" in text
    assert "delet" in prompt_template(1).lower() and "draft" in prompt_template(3).lower()


# ---- the method registry and the compressor's state ----


class CharTokenizer:
    """One token per character: budgets become character counts (easy to check)."""

    def __call__(self, texts, add_special_tokens=False, return_offsets_mapping=False):
        single = isinstance(texts, str)
        batch = [texts] if single else texts
        out = {"input_ids": [[ord(c) for c in t] for t in batch]}
        if return_offsets_mapping:
            out["offset_mapping"] = [[(i, i + 1) for i in range(len(t))] for t in batch]
        return {k: v[0] for k, v in out.items()} if single else out


def make_traces(count: int) -> list[Trace]:
    body = "First we add. Then we multiply the result by two. Wait, check it again. Done here."
    return [Trace(id=f"r{i}", question="Q?", trace=body * (1 + i % 3)) for i in range(count)]


def test_registry_names_every_method_and_its_criteria():
    assert set(METHODS) == {"token", "step", "truncate", "rewrite"}
    for name, method in METHODS.items():
        config = CompressConfig(method=name, rewriter="m" if name == "rewrite" else None)
        assert config.criterion == (method.criteria[0] if method.criteria else None)
        for criterion in method.criteria:
            CompressConfig(method=name, criterion=criterion)
    with pytest.raises(ValueError, match="criterion does not apply to method truncate"):
        CompressConfig(method="truncate", criterion="surprisal")
    assert CompressConfig(method="step", criterion="random").needs_scores is False
    assert CompressConfig(method="step", criterion="random", adaptive=True).needs_scores


def test_resumed_compressor_continues_exactly_from_its_state():
    traces = make_traces(12)
    config = CompressConfig(method="step", criterion="random", budget=0.4, batch_size=4)
    straight = Compressor(config, CharTokenizer())
    whole = [straight(traces[i : i + 4]) for i in range(0, 12, 4)]
    first = Compressor(config, CharTokenizer())
    first(traces[:4])
    state = first.state_dict()
    assert state == {"debt": first.debt} and isinstance(state["debt"], int)
    resumed = Compressor(config, CharTokenizer())
    resumed.load_state_dict(state)
    rest = [resumed(traces[4:8]), resumed(traces[8:12])]
    texts = [[r.trace.trace for r in batch] for batch in whole[1:]]
    assert texts == [[r.trace.trace for r in batch] for batch in rest]
    assert resumed.state_dict() == straight.state_dict()
    # the carried debt moves later budgets: about the 60 tokens owed are kept fewer
    tokens = CompressConfig(method="token", criterion="random", budget=0.4)
    fresh, indebted = Compressor(tokens, CharTokenizer()), Compressor(tokens, CharTokenizer())
    indebted.load_state_dict({"debt": 60})
    kept = [sum(r.tokens_after for r in c(traces[:4])) for c in (fresh, indebted)]
    assert kept[0] - 90 < kept[1] < kept[0] - 30, kept


def test_stored_step_scores_follow_the_steps_they_are_read_for():
    offsets = np.array([[0, 2], [2, 4], [4, 6], [6, 8]])
    surprisal = np.array([1.0, 3.0, 5.0, 7.0], dtype=np.float32)
    entropy = np.array([0.5, 0.5, 1.0, 1.0], dtype=np.float32)
    stored_steps = np.array([[0, 4], [4, 8]])
    record = RecordScores(
        id="a",
        token_ids=np.arange(4, dtype=np.int32),
        offsets=offsets,
        surprisal=surprisal,
        entropy=entropy,
        steps=stored_steps,
        step_scores=step_scores(offsets, stored_steps, surprisal, entropy),
    )
    assert record.for_steps(stored_steps) is record.step_scores
    other = record.for_steps(np.array([[0, 2], [2, 8]]))  # another segmentation
    assert other["step_surprisal_mean"].tolist() == [1.0, 5.0]
    assert other["step_entropy_sum"].tolist() == [0.5, 2.5]


def test_rewrite_and_random_pruning_through_the_registry():
    class Echo(Generator):
        """Replies with the token limit it was given."""

        def stream(self, requests):
            for i, request in enumerate(requests):
                limit = request.sampling.max_new_tokens
                yield i, [Reply(f"short {limit}", None, None, None, truncated=False)]

    traces = make_traces(3)
    result = compress(traces, "rewrite", 0.5, counter=CharTokenizer(), rewriter=Echo())
    assert [r.trace for r in result.records] == ["short 64", "short 123", "short 184"]
    assert all(r.meta["compression"]["level"] == 2 for r in result.records)
    pruned = compress(traces, "token", 0.5, counter=CharTokenizer(), criterion="random")
    assert abs(pruned.summary["ratio_tokens"] - 0.5) < 0.05
