"""The token-budget step planner."""

import json
import math

import numpy as np
import pytest

from cd_fast.train.packing import StepPlanner, plan_steps


def check_plan(planner, plan):
    pieces = sorted(i for step in plan for i in step)
    assert pieces == list(range(len(planner.pieces)))  # each piece exactly once
    assert all(planner.piece_lengths[step].sum() <= planner.budget for step in plan)


def test_every_sample_once_never_over_budget():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 3000, size=2000)
    planner = StepPlanner(lengths, 4096, seed=3)
    for epoch in range(3):
        check_plan(planner, planner.epoch_plan(epoch))


def test_deterministic_and_fresh_per_epoch():
    lengths = np.random.default_rng(1).integers(1, 1000, size=500)
    a, b = StepPlanner(lengths, 2048, seed=7), StepPlanner(lengths, 2048, seed=7)
    assert a.epoch_plan(0) == b.epoch_plan(0) == plan_steps(lengths, 2048, seed=7)
    assert a.epoch_plan(0) != a.epoch_plan(1)
    assert a.epoch_plan(0) != StepPlanner(lengths, 2048, seed=8).epoch_plan(0)


def test_resume_continues_the_same_sequence():
    lengths = np.random.default_rng(2).integers(1, 500, size=300)
    uninterrupted = StepPlanner(lengths, 1024, seed=5)
    stream = iter(uninterrupted)
    expected = [next(stream) for _ in range(400)]  # crosses epoch boundaries

    first = StepPlanner(lengths, 1024, seed=5)
    stream = iter(first)
    got = [next(stream) for _ in range(137)]
    state = json.loads(json.dumps(first.state_dict()))
    resumed = StepPlanner(lengths, 1024, seed=5)
    resumed.load_state_dict(state)
    stream = iter(resumed)
    got += [next(stream) for _ in range(400 - 137)]
    assert got == expected
    with pytest.raises(ValueError, match="seed"):
        StepPlanner(lengths, 1024, seed=6).load_state_dict(state)


def test_overlong_samples_truncate_or_split():
    lengths = [100, 5000, 300, 9000]
    truncating = StepPlanner(lengths, 4096)
    assert truncating.truncated == 2 and truncating.split == 0
    assert [p.length for p in truncating.pieces] == [100, 4096, 300, 4096]
    check_plan(truncating, truncating.epoch_plan(0))

    splitting = StepPlanner(lengths, 4096, overlong="split")
    assert splitting.split == 2 and splitting.truncated == 0
    pieces = [(p.index, p.start, p.stop) for p in splitting.pieces]
    assert pieces == [
        (0, 0, 100),
        (1, 0, 4096),
        (1, 4096, 5000),
        (2, 0, 300),
        (3, 0, 4096),
        (3, 4096, 8192),
        (3, 8192, 9000),
    ]
    check_plan(splitting, splitting.epoch_plan(0))
    with pytest.raises(ValueError, match="StepPlanner"):
        plan_steps(lengths, 4096, overlong="split")
    with pytest.raises(ValueError, match="positive"):
        StepPlanner([3, 0], 10)


def real_lengths(shared_data):
    """Approximate token lengths (4 characters a token) of every real record in shared/data."""
    sources = {
        "qwen3-8b-thinking/qwen3-8b__think-on.jsonl": ("thinking", "content"),
        "gsm8k/train.jsonl": ("question", "answer"),
        "gsm8k/test.jsonl": ("question", "answer"),
        "math500/test.jsonl": ("problem", "solution"),
    }
    lengths = []
    for name, keys in sources.items():
        for line in (shared_data / name).open():
            record = json.loads(line)
            lengths.append(max(1, sum(len(record.get(k) or "") for k in keys) // 4))
    return np.array(lengths)


@pytest.mark.parametrize("budget", [4096, 16384, 32768])
def test_fill_on_real_trace_lengths(shared_data, budget):
    lengths = real_lengths(shared_data)
    planner = StepPlanner(lengths, budget)
    plan = planner.epoch_plan(0)
    check_plan(planner, plan)
    # At most one step more per shuffling window than the token total needs, and the steps
    # (but for the emptiest, which holds the remainder) >= 99% full on average.
    total = planner.piece_lengths.sum()
    windows = math.ceil(total / (planner.window_steps * budget))
    assert len(plan) <= math.ceil(total / budget) + windows - 1
    fills = sorted(planner.piece_lengths[step].sum() / budget for step in plan)
    assert np.mean(fills[1:]) >= 0.99, fills[:5]
    if len(plan) >= 100:
        assert planner.fill(plan) >= 0.99
