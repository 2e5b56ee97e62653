"""The reasoning backbone: step units, value flow, token priorities, budgets that land, explain
output, the HTML page and criterion agreement. Fast: a BPE tokenizer trained here counts."""

import itertools
import json
import random
import shutil
import subprocess

import numpy as np
import pytest

from cd_fast import segment_steps
from cd_fast.compress import compress
from cd_fast.compress.agreement import agreement_table, criteria_agreement, jaccard
from cd_fast.compress.backbone import (
    ANSWER,
    BACKBONE,
    DECORATION,
    REST,
    token_priority,
    value_flow,
)
from cd_fast.compress.config import CompressConfig
from cd_fast.compress.html import render_html
from cd_fast.compress.units import ablation_groups, answer_units, step_units
from cd_fast.data import Trace, write_jsonl
from cd_fast.demo.data import make_dataset
from cd_fast.demo.tokenizer import train_tokenizer

DEMO = make_dataset(64, seed=3, general_share=0.0)  # the math task: value flow has numbers
MARKDOWN = (
    "**Step 1: the crates.** There are 43 crates with 8 boxes each.\n\n"
    "* $43 \\text{ crates} \\times 8 = 344$ boxes in all.\n"
    "* Wait, is that right? Yes: $40 \\times 8 = 320$ and $3 \\times 8 = 24$, so it is.\n\n"
    "### Removing the damaged ones\n"
    "Then 44 boxes are damaged, so 344 - 44 = 300 remain.\n\n---\n"
    "**Answer:** \\boxed{300}"
)


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    """A byte-level BPE trained on the demo traces and the markdown text: cut text re-tokenises
    into other tokens, as with a real student's tokenizer."""
    texts = [t.trace for t in DEMO] + [MARKDOWN] * 8
    folder = tmp_path_factory.mktemp("bpe")
    return train_tokenizer(texts, folder, vocab_size=400), folder


def units_of(trace: Trace, granularity: str) -> list[str]:
    steps = segment_steps([trace.trace])[0]
    return [trace.trace[a:b] for a, b in step_units(trace.trace, steps, granularity)]


def test_units_follow_the_granularity_and_keep_a_question_with_its_answer():
    text = (
        "Hmm, should I multiply the two here? No, that does not fit the story. "
        "I will add them instead.\n\nNext, 2 + 3 = 5 is the total. $$x =\n 5$$ holds.\nDone."
    )
    steps = segment_steps([text])[0]
    sentences = [text[a:b] for a, b in step_units(text, steps, "sentence")]
    assert sentences[:2] == [
        "Hmm, should I multiply the two here? No, that does not fit the story. ",  # bound
        "I will add them instead.\n\n",
    ]
    paragraphs = [text[a:b] for a, b in step_units(text, steps, "paragraph")]
    assert paragraphs == [
        "Hmm, should I multiply the two here? No, that does not fit the story. "
        "I will add them instead.\n\n",
        "Next, 2 + 3 = 5 is the total. $$x =\n 5$$ holds.\n",  # no break inside math
        "Done.",
    ]
    with pytest.raises(ValueError, match="granularity must be one of"):
        step_units(text, steps, "word")


def test_value_flow_finds_the_computation_chain_of_the_demo_traces():
    for trace in DEMO[:20]:
        units = step_units(trace.trace, segment_steps([trace.trace])[0], "paragraph")
        texts = [trace.trace[a:b] for a, b in units]
        seed = answer_units(trace.trace, units, trace.gold)
        importance, chain = value_flow(trace.trace, units, seed)
        for text, on in zip(texts, chain, strict=True):
            computes = (
                (", so " in text and " = " in text)
                or text.startswith("So the answer")
                or " starts with " in text
            )
            assert on == computes, (trace.id, text)
        assert importance[chain].min() >= 1 > importance[~chain].max()
        # off the chain, the checks of its numbers rank above the planning, asides and detours
        checks = np.array([any(c.isdigit() for c in text) for text in texts]) & ~chain
        assert checks.any() and (~chain & ~checks).any()
        assert importance[checks].min() >= 0.5 > importance[~chain & ~checks].max()


def chain_heads(text: str, gold: str) -> list[str]:
    """The value-flow chain of `text`'s paragraphs, each by its head (the text before ":")."""
    units = step_units(text, segment_steps([text])[0], "paragraph")
    _, chain = value_flow(text, units, answer_units(text, units, gold))
    return [text[a:b].split(":")[0].strip() for (a, b), on in zip(units, chain, strict=True) if on]


def test_a_step_reusing_the_numbers_of_an_earlier_one_is_not_a_restatement():
    text = (
        "Start with 6.\n\nAdd 3: 6 + 3 = 9.\n\nCheck: 6 + 3 = 9.\n\nTake 3: 9 - 3 = 6.\n\n"
        "Add 3 again: 6 + 3 = 9.\n\nSo the answer is 9."
    )
    heads = ["Start with 6.", "Add 3", "Take 3", "Add 3 again", "So the answer is 9."]
    assert chain_heads(text, "9") == heads
    # a check of an earlier step whose numbers were not produced anew since stays a restatement
    text = (
        "Start with 9.\n\nAdd 8: 9 + 8 = 17.\n\nDouble: 17 * 2 = 34.\n\nCheck: 9 + 8 = 17.\n\n"
        "Sum: 17 + 34 = 51.\n\nSo the answer is 51."
    )
    heads = ["Start with 9.", "Add 8", "Double", "Sum", "So the answer is 51."]
    assert chain_heads(text, "51") == heads


def test_checks_of_the_chain_rank_above_other_numbers_and_words():
    text = (
        "Start with 4.\n\nAdd 5: 4 + 5 = 9.\n\nMaybe 4 * 5 = 20? No, it is a sum.\n\n"
        "Let me check: 4 + 5 is 9.\n\nI will go on.\n\nSo the answer is 9."
    )
    units = step_units(text, segment_steps([text])[0], "paragraph")
    importance, _ = value_flow(text, units, answer_units(text, units, "9"))
    by_head = {
        text[a:b].split(":")[0].split("?")[0].strip(): i
        for (a, b), i in zip(units, importance, strict=True)
    }
    assert (
        by_head["Let me check"] >= 0.5 > max(by_head["Maybe 4 * 5 = 20"], by_head["I will go on."])
    )
    assert min(by_head["Start with 4."], by_head["Add 5"]) >= 1 > by_head["Let me check"]


def test_step_pruning_by_value_flow_keeps_the_backbone_at_half_the_tokens(bpe):
    tokenizer, _ = bpe
    result = compress(DEMO, "step", 0.5, counter=tokenizer, criterion="value-flow")
    # whole paragraphs of about ten per trace: near the budget, not on it
    assert abs(result.summary["ratio_tokens"] - 0.5) <= 0.03
    assert result.summary["answers_kept"] == len(DEMO)
    kept_chain = 0
    for record, original in zip(result.records, DEMO, strict=True):
        lines = original.trace.split("\n\n")
        computations = [line for line in lines if ", so " in line and " = " in line]
        kept_chain += all(line in record.trace for line in computations)
        assert "Hmm, maybe" not in record.trace or "No, " in record.trace  # never half a detour
    assert kept_chain >= 0.9 * len(DEMO)
    info = result.records[0].meta["compression"]
    assert info["granularity"] == "paragraph" and info["criterion"] == "value-flow"


def test_token_priorities_rank_answer_chain_symbols_words_and_decoration():
    text = MARKDOWN
    steps = segment_steps([text])[0]
    units = step_units(text, steps, "sentence")
    _, chain = value_flow(text, units, answer_units(text, units, "300"))
    offsets = np.array([[i, i + 1] for i in range(len(text))])  # one token per character
    priority = token_priority(
        text, offsets, (text.rfind("300"), text.rfind("300") + 3), units[chain]
    )
    level = dict(zip(range(len(text)), priority.tolist(), strict=True))
    assert level[text.index("**")] == DECORATION and level[text.index("###")] == DECORATION
    assert level[text.index("* $43")] == DECORATION and level[text.index("---")] == DECORATION
    assert all(level[i] == ANSWER for i in range(text.rfind("300"), text.rfind("300") + 3))
    assert level[text.index("344 - 44")] == BACKBONE  # the chain's numbers and operators
    assert level[text.index("- 44")] == BACKBONE
    assert level[text.index("boxes")] == REST
    assert level[text.index("320")] == REST  # a check: no later step uses it


@pytest.mark.parametrize("budget", [0.3, 0.5])
def test_token_pruning_lands_on_the_budget_on_symbol_heavy_text(bpe, budget):
    tokenizer, _ = bpe
    rng = random.Random(0)
    traces = [
        Trace(
            id=f"m{i}",
            question="How many boxes remain?",
            trace="\n\n".join([MARKDOWN] * rng.randint(1, 3)),
            gold="300",
        )
        for i in range(24)
    ]
    result = compress(traces, "token", budget, counter=tokenizer, criterion="random")
    summary = result.summary
    assert abs(summary["ratio_tokens"] - budget) <= 0.02, summary
    assert summary["ratio_asked"] == pytest.approx(budget, abs=0.01)
    assert summary["answers_kept"] == len(traces)
    for record in result.records:
        info = record.meta["compression"]
        assert info["tokens"] == len(tokenizer(record.trace, add_special_tokens=False)["input_ids"])
        assert "**" not in record.trace or budget > 0.3  # decoration goes first


def test_a_budget_the_answer_cannot_fit_is_reported_per_record_and_in_the_summary(
    bpe, cdfast, tmp_path
):
    tokenizer, folder = bpe
    answer = "the long answer " * 10
    traces = [
        Trace(id="a", question="Q?", trace=f"Some thinking here. So it is {answer}.", gold=answer),
        *DEMO[:6],
    ]
    result = compress(
        traces, "step", 0.1, counter=tokenizer, criterion="value-flow", target_tokens=12
    )
    info = result.records[0].meta["compression"]
    assert info["asked_tokens"] == 12 and info["tokens"] > 12
    assert "the steps stating the answer alone take" in info["budget_miss"]
    assert result.summary["records_missing_budget"] >= 1
    source = tmp_path / "in.jsonl"
    write_jsonl(source, traces)
    done = cdfast(
        "compress",
        source,
        "-o",
        tmp_path / "out.jsonl",
        "--method",
        "step",
        "--target-tokens",
        "12",
        "--tokenizer",
        folder,
    )
    assert done.returncode == 0, done.stderr
    budget_row = next(line for line in done.stdout.splitlines() if line.startswith("budget"))
    assert "records off their share" in budget_row
    assert "over: the steps stating the answer alone take" in budget_row


def test_ablation_groups_cap_the_answer_delta_passes():
    units = np.array([[i * 10, i * 10 + 10] for i in range(100)])
    groups = ablation_groups(units, 8)
    assert len(groups.spans) == 8 and groups.of_unit.shape == (100,)
    assert groups.spans[0, 0] == 0 and groups.spans[-1, 1] == 1000
    assert (np.diff(groups.of_unit) >= 0).all()
    small = ablation_groups(units[:5], 8)
    assert small.of_unit.tolist() == [0, 1, 2, 3, 4]


def test_explain_names_each_dropped_span_and_the_page_renders(bpe, tmp_path):
    tokenizer, _ = bpe
    for method, criterion in (("step", "value-flow"), ("token", "random"), ("truncate", None)):
        options = {"criterion": criterion} if criterion else {}
        result = compress(DEMO[:8], method, 0.4, counter=tokenizer, explain=True, **options)
        for record in result.records:
            original = record.meta["original_trace"]
            dropped = record.meta["compression"]["explain"]["dropped"]
            assert dropped and all(
                d["reason"] and d["text"] == original[d["start"] : d["end"]] for d in dropped
            )
            kept = list(original)
            for d in dropped:
                kept[d["start"] : d["end"]] = [""] * (d["end"] - d["start"])
            assert "".join("".join(kept).split()) == "".join(record.trace.split())
    records = compress(DEMO[:4], "step", 0.4, counter=tokenizer, explain=True).records
    page = render_html(records, "demo")
    assert page.count("<del ") == sum(
        len(r.meta["compression"]["explain"]["dropped"]) for r in records
    )
    assert "off the value chain" in page and "<h2>demo-00000</h2>" in page
    with pytest.raises(ValueError, match="--explain applies to token, step and truncate"):
        CompressConfig(method="rewrite", explain=True)


def test_report_html_page_in_a_headless_browser(bpe, cdfast, tmp_path):
    _, folder = bpe
    source = tmp_path / "in.jsonl"
    write_jsonl(source, DEMO[:6])
    out = tmp_path / "step.jsonl"
    done = cdfast(
        "compress",
        source,
        "-o",
        out,
        "--method",
        "step",
        "--budget",
        "0.4",
        "--explain",
        "--tokenizer",
        folder,
    )
    assert done.returncode == 0, done.stderr
    page = tmp_path / "page.html"
    done = cdfast("report", "--html", out, "--traces", "3", "-o", page)
    assert done.returncode == 0 and "wrote" in done.stdout and "(3 traces)" in done.stdout
    plain = cdfast("report", "--html", source, "-o", tmp_path / "x.html")
    assert plain.returncode == 2 and "compress with --explain first" in plain.stderr
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium on this machine (.ci/run installs Debian's): page not rendered")
    shot = tmp_path / "page.png"
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1000,900",
            f"--screenshot={shot}",
            page.as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3).astype(int)
    dark = (pixels.sum(axis=1) < 150).mean()  # text
    red, blue = pixels[:, 0], pixels[:, 2]
    tinted = ((red > 200) & (blue < 190) & (red - blue > 40)).mean()  # the dropped spans' colours
    assert dark > 0.005 and tinted > 0.005, (dark, tinted)


def test_criteria_agreement_table(bpe, cdfast, tmp_path):
    tokenizer, folder = bpe
    config = CompressConfig(method="step")
    rows = criteria_agreement(DEMO[:16], config, tokenizer, budgets=(0.3, 0.6))
    pairs = {(r["a"], r["b"]) for r in rows}
    model_free = ("value-flow", "role", "role+value-flow", "random")  # the others need a scorer
    assert pairs == set(itertools.combinations(model_free, 2))
    assert all(0 <= r["jaccard"] <= 1 and r["traces"] == 16 for r in rows)
    assert jaccard({1, 2}, {2, 3}) == pytest.approx(1 / 3) and jaccard(set(), set()) == 1
    table = agreement_table(rows)
    assert table.splitlines()[0] == "| criteria | budget 0.3 | budget 0.6 |"
    source = tmp_path / "in.jsonl"
    write_jsonl(source, DEMO[:10])
    done = cdfast(
        "compress",
        source,
        "-o",
        tmp_path / "agree.md",
        "--method",
        "step",
        "--compare-criteria",
        "--compare-budgets",
        "0.2",
        "0.5",
        "--tokenizer",
        folder,
    )
    assert done.returncode == 0, done.stderr
    assert "| value-flow / random |" in done.stdout
    assert "left out of the comparison" in done.stderr
    assert (tmp_path / "agree.md").read_text().startswith("# Jaccard overlap")
    assert json.loads(json.dumps(rows))  # plain data
