"""Token scoring with the real SmolLM2: kernel scores equal the model's own logits, mean
surprisal equals its loss, long traces in windows, protection, step scores, the CLI and resume."""

import json

import numpy as np
import pytest
import torch

from cd_fast.data import Trace, TraceReader
from cd_fast.formats import extract_answer
from cd_fast.score import (
    Scorer,
    ScoreStore,
    protected_chars,
    step_reduce,
    token_steps,
)


def gsm8k_traces(shared_data, count):
    reader = TraceReader(shared_data / "gsm8k" / "test.jsonl")
    return [t for _, t in zip(range(count), reader, strict=False)]


def model_scores(model, prompt, trace_ids):
    """Surprisal/entropy of the trace tokens from the model's full logits (SDPA, float64)."""
    ids = torch.tensor([prompt + trace_ids])
    model.set_attn_implementation("sdpa")
    try:
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0].double()
            labels = ids.clone()
            labels[0, : len(prompt)] = -100
            loss = model(input_ids=ids, labels=labels).loss.item()
    finally:
        from cd_fast.patches import register

        model.set_attn_implementation(register())
    log_probs = torch.log_softmax(logits[len(prompt) - 1 : -1], -1)
    surprisal = -log_probs.gather(1, torch.tensor(trace_ids)[:, None])[:, 0]
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    return surprisal.numpy(), entropy.numpy(), loss


def test_kernel_scores_equal_the_models_logits(smollm2, shared_data, triton_interpreter):
    model, tokenizer = smollm2
    (trace,) = gsm8k_traces(shared_data, 1)
    scorer = Scorer(model, tokenizer)
    (record,) = scorer.score([trace])  # the Triton kernel, under the interpreter on the CPU
    prompt = scorer.prompt_ids(trace.question)
    surprisal, entropy, loss = model_scores(model, prompt, record.token_ids.tolist())
    assert np.abs(record.surprisal - surprisal).max() < 1e-3
    assert np.abs(record.entropy - entropy).max() < 1e-3
    assert abs(record.surprisal.mean() - loss) < 1e-4 * max(1.0, loss)
    text = trace.trace  # offsets index the trace: the tokens' characters give it back
    covered = "".join(text[a:b] for a, b in record.offsets)
    assert "".join(covered.split()) == "".join(text.split())
    assert (np.diff(record.offsets[:, 0]) >= 0).all() and record.offsets.max() <= len(text)


def test_packed_batch_equals_one_at_a_time(smollm2, shared_data):
    model, tokenizer = smollm2
    traces = gsm8k_traces(shared_data, 4)
    together = Scorer(model, tokenizer).score(traces)
    for trace, packed in zip(traces, together, strict=True):
        (alone,) = Scorer(model, tokenizer).score([trace])
        assert np.allclose(packed.surprisal, alone.surprisal, atol=2e-4)


def test_long_traces_are_scored_in_windows(smollm2, shared_data):
    model, tokenizer = smollm2
    folder = shared_data / "qwen3-8b-thinking"
    reader = TraceReader(folder / "qwen3-8b__think-on.jsonl", prompts=folder / "items.json")
    trace = next(iter(reader))
    full = Scorer(model, tokenizer).score([trace])[0]
    windowed_scorer = Scorer(model, tokenizer, window=256, overlap=32)
    windowed = windowed_scorer.score([trace])[0]
    prompt = len(windowed_scorer.prompt_ids(trace.question))
    first = 256 - prompt  # tokens of the first window see the same context
    assert windowed_scorer.stats.windows >= 3
    assert np.allclose(windowed.surprisal[:first], full.surprisal[:first], atol=2e-4)
    assert (windowed.surprisal[first:] > 0).all()  # every later token scored too
    assert np.corrcoef(windowed.surprisal, full.surprisal)[0, 1] > 0.8


def test_protection_flags():
    text = "So x = 3 + 4, and the double-check gives $a^2$ then 1,000 apples. \\boxed{7}"
    keep = protected_chars(text, answer="apples")
    assert keep[text.index("x")] and keep[text.index("=")] and keep[text.index("3")]
    assert not keep[text.index("double-check") + 6]  # the hyphen inside a word
    assert keep[text.index("$a^2$") : text.index("$a^2$") + 5].all()
    assert keep[text.rindex("7")] and not keep[text.index("the")]
    assert keep[text.index("apples") : text.index("apples") + 6].all()


def protected_chars_loop(trace: str, answer: str | None = None) -> np.ndarray:
    """The per-character reference `protected_chars` was vectorised from."""
    from cd_fast.formats import answer_span, boxed_spans
    from cd_fast.score.protect import _VARIABLE, OPERATORS, decoration_chars
    from cd_fast.segment import protected_spans

    n = len(trace)
    keep = np.array([ch.isdigit() and "0" <= ch <= "9" for ch in trace], dtype=bool)
    for i, ch in enumerate(trace):
        if ch in OPERATORS:
            keep[i] = True
        elif ch == "-":
            left = trace[i - 1] if i else " "
            right = trace[i + 1] if i + 1 < n else " "
            keep[i] = not (left.isalpha() and right.isalpha())
    keep &= ~decoration_chars(trace)
    for start, end in protected_spans(trace):
        keep[start:end] = True
    for match in _VARIABLE.finditer(trace):
        before, after = match.start() - 1, match.end()
        while before >= 0 and trace[before].isspace():
            before -= 1
        while after < n and trace[after].isspace():
            after += 1
        if (before >= 0 and trace[before] in OPERATORS) or (
            after < n and trace[after] in OPERATORS
        ):
            keep[match.start() : match.end()] = True
    for start, end in boxed_spans(trace):
        keep[start:end] = True
    span = answer_span(trace, answer)
    if span is not None:
        keep[span[0] : span[1]] = True
    return keep


def test_vectorised_protection_equals_the_per_character_rules(qwen3):
    from cd_fast.data import TraceReader

    edge = ["", "-", "a-b", "x =\n\t y", "y\u2003=\u00a0z", "- x", "x -", "é-à 3−x"]
    traces = [t.trace for t in TraceReader(qwen3.traces, prompts=qwen3.items)] + edge
    for text in traces:
        assert np.array_equal(protected_chars(text, "42"), protected_chars_loop(text, "42")), text


def test_extract_answer():
    assert extract_answer("so it is \\boxed{\\frac{1}{2}}.") == "\\frac{1}{2}"
    assert extract_answer("blah\n\nAnswer: 670") == "670"
    assert extract_answer("Janet sells 9 eggs.\n#### 18") == "18"
    assert extract_answer("The total is 1,234 apples") == "1,234"
    assert extract_answer("no digits here") is None and extract_answer(None) is None


def test_step_reduce():
    offsets = np.array([[0, 3], [3, 6], [7, 9], [9, 12], [15, 18]])
    steps = np.array([[0, 7], [7, 15], [15, 20], [20, 25]])
    owner = token_steps(offsets, steps)
    assert owner.tolist() == [0, 0, 1, 1, 2]
    reduced = step_reduce(np.array([1.0, 3.0, 2.0, 2.0, 5.0]), owner, 4)
    assert reduced["sum"].tolist() == [4.0, 4.0, 5.0, 0.0]
    assert reduced["mean"].tolist() == [2.0, 2.0, 5.0, 0.0]
    assert reduced["max"].tolist() == [3.0, 2.0, 5.0, 0.0]


def test_step_max_equals_the_unbuffered_maximum():
    """The segmented max (a run per step) against `np.maximum.at`, tokens in or out of order."""
    rng = np.random.default_rng(0)
    for trial in range(200):
        steps = int(rng.integers(1, 8))
        owner = rng.integers(0, steps, int(rng.integers(0, 40)))
        if trial % 2:
            owner.sort()
        values = rng.normal(size=len(owner)).astype(np.float32)
        expected = np.full(steps, -np.inf)
        np.maximum.at(expected, owner, values)
        expected[np.bincount(owner, minlength=steps) == 0] = 0.0
        assert np.array_equal(step_reduce(values, owner, steps)["max"], expected)


class CountingTokenizer:
    """The real tokenizer, counting the texts it tokenises (when a forward starts: how much of
    the list the scorer had tokenised by then)."""

    def __init__(self, tokenizer):
        self.tokenizer, self.texts = tokenizer, 0

    def __call__(self, texts, *args, **kwargs):
        self.texts += len(texts)
        return self.tokenizer(texts, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def test_the_device_starts_before_the_traces_are_all_tokenised(smollm2, shared_data):
    """The first forward is the first trace alone (tokenised then: its text and prompt), the
    rest is tokenised a group at a time while batches run; an empty trace and given steps pass
    through; the scores equal one-at-a-time scoring."""
    model, tokenizer = smollm2
    traces = gsm8k_traces(shared_data, 10)
    traces[3] = Trace(id="empty", question="Nothing?", trace="")
    traces[5] = Trace(
        id="given", question="2+3?", trace="Two plus three. It is 5.", steps=[[0, 15], [15, 24]]
    )
    counting = CountingTokenizer(tokenizer)
    options = dict(max_tokens_per_batch=512, window=256, overlap=64)  # budgets from 32 tokens
    scorer = Scorer(model, counting, **options)
    tokenised = []
    hook = model.base_model.register_forward_pre_hook(lambda *_: tokenised.append(counting.texts))
    try:
        records = scorer.score(traces)
    finally:
        hook.remove()
    # a text and a prompt per trace: the first trace, and at most the group packed meanwhile
    assert 2 <= tokenised[0] <= 4 and len(tokenised) >= 6, tokenised
    assert [r.id for r in records] == [t.id for t in traces]
    assert len(records[3].token_ids) == 0 and records[3].steps.shape == (0, 2)
    assert records[5].steps.tolist() == [[0, 15], [15, 24]]
    for index in (0, 3, 5, 9):
        (alone,) = Scorer(model, tokenizer, **options).score([traces[index]])
        assert np.allclose(records[index].surprisal, alone.surprisal, atol=2e-4)
        assert np.array_equal(records[index].offsets, alone.offsets)


def test_a_failure_in_the_prefetching_thread_reaches_the_caller(smollm2, shared_data):
    model, tokenizer = smollm2
    traces = gsm8k_traces(shared_data, 6)
    traces[4] = Trace(id="bad", question="?", trace="One. Two.", steps=[[0, 4, 9]])
    with pytest.raises(ValueError, match="reshape"):
        Scorer(model, tokenizer, max_tokens_per_batch=256).score(traces)


@pytest.mark.slow
def test_cli_scores_real_traces_and_resumes(smollm2_path, shared_data, tmp_path, cdfast):
    folder = shared_data / "qwen3-8b-thinking"
    out = tmp_path / "scores"
    args = [
        "score",
        folder / "qwen3-8b__think-on.jsonl",
        "--prompts",
        folder / "items.json",
        "--model",
        smollm2_path,
        "-o",
        out,
        "--limit",
        "2",
        "--shard-size",
        "1",
    ]
    first = cdfast(*args)
    assert first.returncode == 0, first.stderr
    assert "scored 2 records" in first.stdout and "tokens/s" in first.stdout
    records = list(ScoreStore(out))
    assert [r.id for r in records] == ["arith-00-0", "arith-00-1"]
    traces = {
        t.id: t
        for t in TraceReader(folder / "qwen3-8b__think-on.jsonl", prompts=folder / "items.json")
    }
    for record in records:
        trace = traces[record.id]
        assert len(record.token_ids) > 100 and np.isfinite(record.surprisal).all()
        assert record.steps[-1, 1] == len(trace.trace)
        assert np.isclose(
            record.step_scores["step_surprisal_sum"].sum(), record.surprisal.sum(), rtol=1e-4
        )
    saved = (out / "shard-00001.parquet").read_bytes()

    again = cdfast(*args)
    assert again.returncode == 2 and "--resume" in again.stderr
    (out / "shard-00001.parquet").unlink()
    resumed = cdfast(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "scored 1 records" in resumed.stdout  # only the missing shard
    assert [r.id for r in ScoreStore(out)] == ["arith-00-0", "arith-00-1"]
    assert len((out / "shard-00001.parquet").read_bytes()) == len(saved)
    by_id = ScoreStore(out).by_id()
    assert np.allclose(by_id["arith-00-1"].surprisal, records[1].surprisal, atol=1e-5)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["total_shards"] == 2 and manifest["records"] == 2


def test_trace_with_given_steps_keeps_them(smollm2):
    model, tokenizer = smollm2
    trace = Trace(
        id="t", question="What is 2+3?", trace="Two plus three. It is 5.", steps=[[0, 15], [15, 24]]
    )
    (record,) = Scorer(model, tokenizer).score([trace])
    assert record.steps.tolist() == [[0, 15], [15, 24]]
    assert len(record.step_scores["step_entropy_mean"]) == 2


def test_torchrun_ranks_split_the_shards(smollm2, shared_data, tmp_path, monkeypatch):
    from cd_fast.data import ReadConfig
    from cd_fast.score import ScoreConfig, score_file

    config = ScoreConfig(model="smollm2", shard_size=1)
    out = tmp_path / "scores"
    written = {}
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        reader = TraceReader(shared_data / "gsm8k" / "test.jsonl")
        scorer = score_file(reader, out, config, ReadConfig(limit=3), loaded=smollm2)
        written[rank] = scorer.stats.records
        if rank == 0:
            with pytest.raises(ValueError, match="2 of 3 shards"):
                ScoreStore(out)
    assert written == {0: 2, 1: 1}  # shards 0, 2 and shard 1
    assert [r.id for r in ScoreStore(out)] == ["test:1", "test:2", "test:3"]
