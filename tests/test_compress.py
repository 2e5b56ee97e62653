"""Compression on the real Qwen3-8B traces in ../shared, scored by the real SmolLM2-135M."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from cd_fast import segment_steps
from cd_fast.compress import CompressConfig, adaptive_targets, compress, final_answer
from cd_fast.compress.answer_delta import answer_delta, answer_losses
from cd_fast.compress.rewrite import HTTPRewriter, LocalRewriter, fill_template, prompt_template
from cd_fast.compress.select import answer_position, contains_answer, join_spans
from cd_fast.data import Trace, TraceReader, write_jsonl
from cd_fast.score import Scorer
from cd_fast.score.store import write_manifest, write_shard

REPO = Path(__file__).resolve().parents[1]
TRACES = "qwen3-8b-thinking/qwen3-8b__think-on.jsonl"
ITEMS = "qwen3-8b-thinking/items.json"
MIX = (("arith", 3), ("deduct", 1), ("recall", 3), ("overthink", 3), ("instruct", 1))


@pytest.fixture(scope="session")
def mixed_traces() -> list[Trace]:
    """The shortest traces of each kind (math, deduction, recall, overthinking, instructions)."""
    data = REPO.parent / "shared" / "data"
    if not data.is_dir():
        pytest.skip(f"real data not found at {data}")
    every = list(TraceReader(data / TRACES, prompts=data / ITEMS))
    chosen = []
    for kind, count in MIX:
        usable = [t for t in every if t.id.startswith(kind)
                  and (not t.gold or contains_answer(t.trace, final_answer(t)))]  # fmt: skip
        chosen += sorted(usable, key=lambda t: (len(t.trace), t.id))[:count]
    return chosen


@pytest.fixture(scope="session")
def scorer(smollm2) -> Scorer:
    model, tokenizer = smollm2
    return Scorer(model, tokenizer)


@pytest.fixture(scope="session")
def scored(scorer, mixed_traces) -> dict:
    # The kernels' torch paths (the Triton interpreter is tested in test_token_scores/test_pack
    # and would double this session fixture's time).
    saved = os.environ.pop("TRITON_INTERPRET", None)
    try:
        return {record.id: record for record in scorer.score(mixed_traces)}
    finally:
        if saved is not None:
            os.environ["TRITON_INTERPRET"] = saved


@pytest.fixture(scope="session")
def smollm2_dir(smollm2, tmp_path_factory) -> Path:
    """The real SmolLM2 as a transformers folder (what servers and --tokenizer take)."""
    model, tokenizer = smollm2
    out = tmp_path_factory.mktemp("smollm2-hf")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def in_order(original: str, compressed: str) -> bool:
    """Every whitespace-separated piece of `compressed` occurs in `original` after the last."""
    at = 0
    for piece in compressed.split():
        found = original.find(piece, at)
        if found < 0:
            return False
        at = found + len(piece)
    return True


def digits(text: str) -> int:
    return sum(ch.isdigit() for ch in text)


# ---- building blocks ----


def test_join_spans_never_fuses_words_or_splits_characters():
    text = "Wait, let me check: héllo wörld 𝔘nicode.\n\nSo x = 42 and y = 7."
    assert join_spans(text, [(0, 4), (6, 9)]) == "Wait let"
    assert join_spans(text, [(20, 25), (26, 31)]) == "héllo wörld"
    assert join_spans(text, [(0, 5), (42, 44)]) == "Wait,\nSo"
    assert join_spans(text, [(32, 33), (33, 39)]) == "𝔘nicode"
    assert join_spans(text, [(6, 9), (0, 4), (2, 8)]) == "Wait, let"  # sorted and merged


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


# ---- pruning on real traces ----


def check_pruned(result, originals, budget=0.3):
    summary = result.summary
    assert abs(summary["ratio_tokens"] - budget) <= 0.02, summary
    assert summary["answers_kept"] >= 0.95 * summary["answers_in_original"]
    by_id = {t.id: t for t in originals}
    for record in result.records:
        original = by_id[record.id].trace
        info = record.meta["compression"]
        assert in_order(original, record.trace), record.id
        assert info["ratio_tokens"] < 1 and len(record.trace) < len(original)
        if info["answer_kept"] is not None:
            assert info["answer_kept"], record.id
    return summary


@pytest.mark.parametrize("criterion", ["surprisal", "entropy", "random"])
def test_token_pruning_meets_the_budget_and_keeps_symbols(criterion, scorer, scored, mixed_traces):
    result = compress(mixed_traces, "token", 0.3, scorer=scorer, scores=scored, criterion=criterion)
    summary = check_pruned(result, mixed_traces)
    assert summary["records_out"] == len(mixed_traces) and summary["method"] == "token"
    by_id = {t.id: t for t in mixed_traces}
    for record in result.records:  # every digit (protected) survives
        assert digits(record.trace) == digits(by_id[record.id].trace), record.id
    again = compress(mixed_traces, "token", 0.3, scorer=scorer, scores=scored, criterion=criterion)
    assert [r.trace for r in again.records] == [r.trace for r in result.records]


def test_token_criteria_choose_differently(scorer, scored, mixed_traces):
    outputs = {
        c: [r.trace for r in compress(mixed_traces, "token", 0.3, scorer=scorer, scores=scored,
                                      criterion=c).records]
        for c in ("surprisal", "random")
    }  # fmt: skip
    assert outputs["surprisal"] != outputs["random"]
    other_seed = compress(mixed_traces, "token", 0.3, scorer=scorer, criterion="random", seed=1)
    assert [r.trace for r in other_seed.records] != outputs["random"]


@pytest.mark.parametrize("criterion", ["surprisal", "entropy", "random"])
def test_step_pruning_meets_the_budget_and_keeps_order(criterion, scorer, scored, mixed_traces):
    result = compress(mixed_traces, "step", 0.3, scorer=scorer, scores=scored, criterion=criterion)
    check_pruned(result, mixed_traces)
    steps = segment_steps([t.trace for t in mixed_traces])
    for record, original, spans in zip(result.records, mixed_traces, steps, strict=True):
        assert record.meta["compression"]["kept_steps"] >= 1
        first_step = original.trace[spans[0, 0] : spans[0, 1]].strip()
        assert record.trace.startswith(first_step), record.id  # the first step stays


def test_adaptive_budget_holds_the_dataset_ratio(scorer, scored, mixed_traces):
    flat = compress(mixed_traces, "step", 0.3, scorer=scorer, scores=scored, batch_size=64)
    adaptive = compress(mixed_traces, "step", 0.3, scorer=scorer, scores=scored, adaptive=True,
                        batch_size=64)  # fmt: skip
    assert abs(adaptive.summary["ratio_tokens"] - 0.3) <= 0.02
    flat_ratios = [r.meta["compression"]["ratio_tokens"] for r in flat.records]
    adaptive_ratios = [r.meta["compression"]["ratio_tokens"] for r in adaptive.records]
    assert np.std(adaptive_ratios) > np.std(flat_ratios)


def test_answer_delta_equals_the_models_answer_loss(smollm2, scorer, shared_data):
    import torch

    model, tokenizer = smollm2
    rows = [json.loads(x) for x in (shared_data / "gsm8k" / "test.jsonl").open()][:3]
    traces = [
        Trace(id=f"gsm8k-{i}", question=r["question"], trace=r["answer"].split("####")[0],
              gold=r["answer"].split("####")[1].strip())
        for i, r in enumerate(rows)
    ]  # fmt: skip
    trace = traces[0]
    steps = np.array([[0, trace.trace.find("\n") + 1], [trace.trace.find("\n") + 1,
                                                        len(trace.trace)]])  # fmt: skip
    deltas = answer_delta(model, tokenizer, trace.question, trace.trace, steps, "42")
    assert deltas.shape == (2,) and np.isfinite(deltas).all()
    # the packed, head-fused loss equals the model's own loss on one sequence
    loss = answer_losses(model, tokenizer, trace.question, [trace.trace], "42")[0]
    from cd_fast.models import chat_prompt

    prefix = tokenizer(chat_prompt(tokenizer, trace.question) + "<think>\n" + trace.trace,
                       add_special_tokens=False)["input_ids"]  # fmt: skip
    suffix = tokenizer("\n</think>\n\n42", add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prefix + suffix])
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits[0, len(prefix) - 1 : -1].double()
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor(suffix), reduction="sum")
    assert loss == pytest.approx(expected.item(), rel=1e-3)
    # compress with the criterion: the budget holds and the answers stay
    result = compress(traces, "step", 0.5, scorer=scorer, criterion="answer-delta")
    assert result.summary["answers_kept"] == result.summary["answers_in_original"] == 3


# ---- truncation and the lost-answer policies ----


def test_truncation_and_matched_lengths(scorer, mixed_traces):
    truncated = compress(mixed_traces, "truncate", 0.3, scorer=scorer)
    assert abs(truncated.summary["ratio_tokens"] - 0.3) <= 0.02
    for record, original in zip(truncated.records, mixed_traces, strict=True):
        if record.meta["compression"]["action"] == "compressed":
            assert original.trace.startswith(record.trace)
    stepped = compress(mixed_traces, "step", 0.3, scorer=scorer, criterion="random")
    counts = scorer.tokenizer([r.trace for r in stepped.records], add_special_tokens=False)
    lengths = {r.id: len(ids) for r, ids in zip(stepped.records, counts["input_ids"], strict=True)}
    matched = compress(mixed_traces, "truncate", None, scorer=scorer, match_lengths=lengths,
                       on_lost_answer="original")  # fmt: skip
    for record in matched.records:
        if record.meta["compression"]["action"] == "compressed":
            got = len(scorer.tokenizer(record.trace, add_special_tokens=False)["input_ids"])
            assert abs(got - lengths[record.id]) <= 2, record.id


def test_target_tokens_caps_each_trace(scorer, mixed_traces):
    result = compress(mixed_traces, "truncate", None, scorer=scorer, target_tokens=40,
                      on_lost_answer="original")  # fmt: skip
    assert result.summary["budget"] == 40
    for record in result.records:
        got = len(scorer.tokenizer(record.trace, add_special_tokens=False)["input_ids"])
        assert record.meta["compression"]["action"] == "original" or got <= 41, record.id


@pytest.mark.parametrize("policy", ["expand", "original", "drop"])
def test_lost_answer_policies(policy, scorer, mixed_traces):
    result = compress(mixed_traces, "truncate", 0.1, scorer=scorer, on_lost_answer=policy)
    summary = result.summary
    lost = summary["answers_lost_before_policy"]
    assert lost >= 3
    if policy == "drop":
        assert summary["records_dropped"] == lost
        assert summary["records_out"] == len(mixed_traces) - lost
    else:
        assert summary["answers_kept"] == summary["answers_in_original"]
        assert summary[f"records_{'expanded' if policy == 'expand' else 'original'}"] == lost
    if policy == "original":
        by_id = {t.id: t.trace for t in mixed_traces}
        reverted = [r for r in result.records if r.meta["compression"]["action"] == "original"]
        assert all(r.trace == by_id[r.id] for r in reverted)


# ---- rewriting ----


def short_traces(mixed_traces, count=2):
    return sorted(mixed_traces, key=lambda t: len(t.trace))[:count]


def test_prompt_templates():
    for level in (1, 2, 3):
        text = fill_template(prompt_template(level), "Q?", r"\boxed{7} {x}", 12)
        assert "Q?" in text and r"\boxed{7} {x}" in text and "12 words" in text
    assert "delet" in prompt_template(1).lower() and "draft" in prompt_template(3).lower()


def test_rewrite_with_the_local_backend(smollm2_dir, mixed_traces):
    rewriter = LocalRewriter(smollm2_dir, device="cpu", batch_size=2)
    traces = short_traces(mixed_traces)
    result = compress(traces, "rewrite", 0.3, counter=rewriter.tokenizer, rewriter=rewriter,
                      level=2, max_new_tokens=24)  # fmt: skip
    assert len(result.records) == 2
    for record, original in zip(result.records, traces, strict=True):
        info = record.meta["compression"]
        assert info["method"] == "rewrite" and info["level"] == 2
        assert record.trace.strip() and record.trace != original.trace
        assert info["answer_kept"] in (True, None)  # restored by the expand policy if lost


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def served_smollm2(smollm2_dir):
    """`transformers serve` with the real SmolLM2 on a loopback port."""
    port = free_port()
    log = open(smollm2_dir.parent / "serve.log", "w")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [sys.executable, "-m", "transformers.cli.transformers", "serve", str(smollm2_dir),
         "--device", "cpu", "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(url + "/health", timeout=1)
                break
            except OSError:
                if server.poll() is not None:
                    pytest.fail(f"transformers serve exited: {Path(log.name).read_text()[-2000:]}")
                time.sleep(0.5)
        else:
            pytest.fail("transformers serve did not come up in 120 s")
        yield url + "/v1"
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def test_rewrite_over_http_against_transformers_serve(served_smollm2, smollm2_dir, mixed_traces,
                                                       tmp_path):  # fmt: skip
    traces = short_traces(mixed_traces, 3)
    source = tmp_path / "traces.jsonl"
    write_jsonl(source, traces)
    out = tmp_path / "rewritten.jsonl"
    done = cdfast("compress", source, "-o", out, "--method", "rewrite", "--level", "3",
                  "--backend", "http", "--base-url", served_smollm2, "--rewriter",
                  str(smollm2_dir), "--tokenizer", smollm2_dir, "--max-new-tokens", "24",
                  "--concurrency", "2")  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in records] == [t.id for t in traces]
    assert all(r["meta"]["compression"]["level"] == 3 and r["trace"].strip() for r in records)
    summary = json.loads((tmp_path / "rewritten.jsonl.summary.json").read_text())
    assert summary["records"] == 3 and summary["seconds"]["generation"] > 0


def test_http_rewriter_retries_then_fails_clearly():
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    rewriter = HTTPRewriter(dead, "m", retries=2, backoff=0.01, timeout=2)
    tic = time.perf_counter()
    with pytest.raises(RuntimeError, match="no answer after 3 attempts"):
        rewriter.generate(["hello"], [8])
    assert time.perf_counter() - tic >= 0.03  # backed off 0.01 + 0.02


# ---- the command line ----


def cdfast(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "cd_fast.cli", *map(str, args)], capture_output=True, text=True,
        env=env, cwd=REPO, timeout=900,
    )  # fmt: skip


def test_cli_prunes_with_stored_scores(scored, mixed_traces, smollm2_dir, tmp_path):
    store = tmp_path / "scores"
    store.mkdir()
    write_shard(store, 0, list(scored.values()))
    write_manifest(store, {"version": 1, "total_shards": 1})
    source = tmp_path / "traces.jsonl"
    write_jsonl(source, mixed_traces)
    out = tmp_path / "token.jsonl"
    done = cdfast("compress", source, "-o", out, "--method", "token", "--budget", "0.3",
                  "--scores", store, "--tokenizer", smollm2_dir, "--keep-original")  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "ratio (tokens)" in done.stdout and "answers kept" in done.stdout
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(records) == len(mixed_traces)
    assert all(r["meta"]["original_trace"] for r in records)
    summary = json.loads((tmp_path / "token.jsonl.summary.json").read_text())
    assert abs(summary["ratio_tokens"] - 0.3) <= 0.02


def test_cli_resumes_after_a_failure_and_reports_bad_lines(shared_data, smollm2_dir, tmp_path):
    lines = (shared_data / TRACES).read_text().splitlines()[:30]
    good = tmp_path / "good.jsonl"
    good.write_text("\n".join(lines) + "\n")
    broken = tmp_path / "broken.jsonl"
    broken.write_text("\n".join([*lines[:19], '{"id": "x", "completion": 5}', *lines[20:]]) + "\n")
    common = ["--prompts", shared_data / ITEMS, "--method", "truncate", "--budget", "0.3",
              "--tokenizer", smollm2_dir, "--batch-size", "8"]  # fmt: skip
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
