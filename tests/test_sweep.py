"""`cdfast sweep`: the grid and its errors, and --help. A sweep killed mid-cell and resumed is in
test_reliability.py, with the other interruptions."""

from __future__ import annotations

import pytest

from cd_fast.sweep import SweepConfig, grid_cells


def test_the_grid_expands_to_the_cells_each_method_takes():
    config = SweepConfig(
        student="s",
        methods=["token", "step", "truncate", "rewrite"],
        criteria=["surprisal", "value-flow", "step:role"],
        granularities=["paragraph", "sentence"],
        levels=[1, 3],
        budgets=[0.3],
        rewriter="r",
    )
    assert [c.name for c in grid_cells(config)] == [
        "token-surprisal@0.3",
        "step-surprisal@0.3",
        "step-surprisal-sentence@0.3",
        "step-value-flow@0.3",
        "step-value-flow-sentence@0.3",
        "step-role-paragraph@0.3",
        "step-role@0.3",
        "truncate@0.3",
        "rewrite-L1@0.3",
        "rewrite-L3@0.3",
    ]
    only = SweepConfig(student="s", methods=["token", "step"], criteria=["token:surprisal"])
    assert [c.name for c in grid_cells(only)] == ["token-surprisal@0.3", "token-surprisal@0.5"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"methods": ["token"], "criteria": ["value-flow"]}, "the grid is empty"),
        ({"criteria": ["token:role"]}, "criterion 'token:role'"),
        ({"methods": ["rewrite"]}, "needs --rewriter"),
        ({"budgets": [0.3, 1.5]}, "budgets must be <= 1"),
    ],
)
def test_a_grid_that_cannot_run_is_one_clear_error(options, message):
    with pytest.raises(ValueError, match=message):
        SweepConfig(student="s", **options)


def test_sweep_help_explains_the_grid_and_every_output(cdfast):
    done = cdfast("sweep", "--help")
    assert done.returncode == 0
    for phrase in (
        "--criteria",
        "--granularities",
        "--levels",
        "--budgets",
        "--domains",
        "METHOD:CRITERION",
        "report.md",
        "agreement.md",
        "sweep.json",
        "cells/CELL.json",
        "--resume",
    ):
        assert phrase in done.stdout, phrase


def test_domains_keep_their_records_and_an_absent_domain_is_one_clear_error():
    from cd_fast.data import Trace
    from cd_fast.sweep.run import keep_domains, split_holdout

    records = [
        Trace(f"q{i}", "q", "t", gold=str(i), meta={"domain": "math" if i % 2 else "general"})
        for i in range(10)
    ]
    assert [r.id for r in keep_domains(records, ["math"], "training")] == [
        "q1",
        "q3",
        "q5",
        "q7",
        "q9",
    ]
    assert keep_domains(records, [], "training") == records
    with pytest.raises(ValueError, match=r"no evaluation record in the domains \['law'\]"):
        keep_domains(records, ["law"], "evaluation")
    train, held = split_holdout(records, 100, "x.jsonl")  # at most a fifth is held out
    assert [r.id for r in held] == ["q8", "q9"] and len(train) == 8
