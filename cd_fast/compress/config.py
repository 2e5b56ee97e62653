"""CompressConfig: the three knobs (criterion, restructuring level, budget) and their options."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cd_fast.compress.criteria import CRITERIA, METHOD_CRITERIA, SCORES
from cd_fast.compress.units import GRANULARITIES
from cd_fast.config import check_ranges, option
from cd_fast.formats import DEFAULT_TARGET_TEMPLATE, check_target_template
from cd_fast.score.store import MANIFEST

KEEP, MODELS, REWRITE = "what to keep", "scores and models", "rewriting (--method rewrite)"
LOST_ANSWER_POLICIES = ("expand", "original", "drop")
AGGREGATIONS = ("sum", "mean", "max")


@dataclass
class CompressConfig:
    """How `cdfast compress` runs; CLI flags map one to one."""

    method: str = option(
        choices=tuple(METHOD_CRITERIA),
        group=KEEP,
        help="How to compress: token / step pruning by importance, truncate (keep the head), "
        "rewrite (an instruct model).",
    )
    budget: float | None = option(
        0.3,
        above=0,
        maximum=1,
        group=KEEP,
        help="Fraction of each trace's tokens to keep (counted with the student's tokenizer).",
    )
    target_tokens: int | None = option(
        None,
        minimum=1,
        group=KEEP,
        help="Keep at most this many tokens per trace instead of a fraction.",
    )
    scores: str | None = option(
        None,
        group=MODELS,
        help="Folder written by `cdfast score` for these traces (token/step pruning, adaptive).",
    )
    scorer: str | None = option(
        None,
        group=MODELS,
        help="Scorer LM to compute scores on the fly (folder, hub id or .gguf) when --scores is "
        "absent.",
    )
    tokenizer: str | None = option(
        None,
        group=MODELS,
        help="The student's tokenizer, which counts the budget's tokens (default: the scorer's).",
    )
    device: str | None = option(
        None,
        group=MODELS,
        help="cuda or cpu for the scorer and a local rewriter (default: cuda when available).",
    )
    criterion: str | None = option(
        None,
        choices=tuple(CRITERIA),
        group=KEEP,
        help="Importance. token: surprisal (-log p of the token under the scorer LM) | entropy "
        "(of the scorer's next-token distribution) | random. step: value-flow (no model: the "
        "steps whose numbers a later kept step or the answer uses) | surprisal | entropy "
        "(aggregated over the step's tokens by --aggregation) | answer-delta (how much the "
        "answer's loss rises without the step) | role (step roles: deduction and the conclusion "
        "kept first, backtracking, hesitation and repeated checks dropped first; no model) | "
        "role+value-flow, role+surprisal (role, ties broken by the other criterion) | random. "
        "Default: the first of each list.",
    )
    granularity: str | None = option(
        None,
        choices=GRANULARITIES,
        group=KEEP,
        help="step: the unit kept or dropped: paragraph (text between line breaks, with its "
        "discourse marker) or sentence; a unit ending in a question stays with its answer. "
        "Default: sentence for the role criteria (a paragraph mixes roles), paragraph otherwise.",
    )
    aggregation: str = option(
        "sum",
        choices=AGGREGATIONS,
        group=KEEP,
        help="step, surprisal and entropy: a step's score is the sum, mean or max of its tokens' "
        "scores.",
    )
    max_ablations: int = option(
        64,
        minimum=1,
        group=KEEP,
        help="step, answer-delta: at most this many ablations per trace (beyond it, runs of "
        "consecutive steps are cut together), so the cost is at most this many + 1 forward "
        "passes of the trace.",
    )
    explain: bool = option(
        False,
        group=KEEP,
        help="Store per record, in meta.compression.explain, the dropped spans with their "
        "scores and the criterion's reason, and the original trace (`cdfast report --html` "
        "renders them).",
    )
    adaptive: bool = option(
        False,
        group=KEEP,
        help="Spend more of the budget on harder traces (longer, higher mean surprisal) while "
        "holding the dataset-level ratio.",
    )
    protect: bool = option(
        True,
        group=KEEP,
        help="Token pruning keeps tokens in priority order: the final answer, the numbers and "
        "operators of the value-flow chain, then the rest by importance (markdown decoration "
        "last). --no-protect ranks by importance alone.",
    )
    on_lost_answer: str = option(
        "expand",
        choices=LOST_ANSWER_POLICIES,
        group=KEEP,
        help='When the compressed trace lost the original\'s final answer: "expand" puts the '
        'sentence that states it back, "original" keeps the whole original trace, "drop" '
        "drops the record.",
    )
    keep_original: bool = option(
        False, group=KEEP, help="Store the uncompressed trace in meta.original_trace."
    )
    seed: int = option(
        0, group=KEEP, help="Seeds the random criterion (per record: seed + record id)."
    )
    level: int = option(
        2,
        choices=(1, 2, 3),
        group=REWRITE,
        help="rewrite: 1 deletes words only, 2 concise rewrite keeping every step and number, 3 a "
        "draft of a few words per step.",
    )
    prompt: str | None = option(
        None,
        group=REWRITE,
        help="rewrite: a prompt template file ({question}, {trace}, {target_words}) overriding the "
        "level's packaged one.",
    )
    rewriter: str | None = option(
        None,
        group=REWRITE,
        help="rewrite: the instruct model (folder, hub id or .gguf for transformers/vllm; the "
        "served model name for --backend http).",
    )
    max_new_tokens: int | None = option(
        None,
        minimum=1,
        group=REWRITE,
        help="rewrite: generation cap (default: 1.5x the trace's token budget, at least 64).",
    )
    batch_size: int = option(
        64,
        minimum=1,
        group=MODELS,
        help="Records per batch: scored together, budgeted together (a larger batch holds the "
        "dataset-level ratio more tightly), written together (the unit of resume).",
    )
    target_template: str = option(
        DEFAULT_TARGET_TEMPLATE,
        group=MODELS,
        help="The student's target format (as `cdfast train --target-template`): scores computed "
        "here and answer-delta condition each trace on it.",
    )
    generation_batch_size: int = option(
        8,
        minimum=1,
        group=MODELS,
        help="rewrite, --backend transformers: sequences per generate() call.",
    )
    match_lengths: str | None = option(
        None,
        group=KEEP,
        help="truncate: a JSONL of another method's output; each record keeps as many tokens as "
        "its counterpart (by id) there.",
    )

    compare_criteria: bool = option(
        False,
        group=KEEP,
        help="Instead of compressing, print (and write to -o, markdown) the mean Jaccard overlap "
        "of the steps kept by each pair of step criteria at each --compare-budgets, at "
        "--granularity and --aggregation.",
    )
    compare_budgets: list[float] = option(
        default_factory=lambda: [0.1, 0.3, 0.5],
        above=0,
        maximum=1,
        group=KEEP,
        metavar="B",
        help="--compare-criteria: the budgets compared.",
    )

    def __post_init__(self) -> None:
        if self.method not in METHOD_CRITERIA:
            raise ValueError(f"method must be one of {tuple(METHOD_CRITERIA)}, got {self.method!r}")
        allowed = METHOD_CRITERIA[self.method]
        if self.criterion is None and allowed:
            self.criterion = allowed[0]
        if allowed and self.criterion not in allowed:
            raise ValueError(f"--criterion for {self.method} must be one of {allowed}")
        if not allowed and self.criterion is not None:
            raise ValueError(f"--criterion does not apply to method {self.method}")
        if (
            self.target_tokens is None
            and self.match_lengths is None
            and not (self.budget and 0 < self.budget <= 1)
        ):
            raise ValueError(f"budget must be in (0, 1], got {self.budget}")
        check_ranges(self)
        if self.match_lengths is not None and self.method != "truncate":
            raise ValueError("match_lengths applies to method truncate")
        if self.on_lost_answer not in LOST_ANSWER_POLICIES:
            raise ValueError(f"on_lost_answer must be one of {LOST_ANSWER_POLICIES}")
        if self.level not in (1, 2, 3):
            raise ValueError(f"level must be 1, 2 or 3, got {self.level}")
        if self.granularity is None:
            by_role = (self.criterion or "").startswith("role")
            self.granularity = "sentence" if by_role else "paragraph"
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}")
        if self.explain and self.method == "rewrite":
            raise ValueError(
                "--explain applies to token, step and truncate (a rewrite has no dropped spans)"
            )
        check_target_template(self.target_template)

    @property
    def needs_scores(self) -> bool:
        """Whether the scorer LM's token scores are needed (random needs only tokens)."""
        criterion = CRITERIA.get(self.criterion) if self.criterion else None
        return (criterion is not None and criterion.needs == SCORES) or self.adaptive

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def input_files(self) -> dict[str, Path | None]:
        """The files besides the traces a run reads (its manifest fingerprints them)."""
        return {
            "scores": Path(self.scores) / MANIFEST if self.scores else None,
            "match_lengths": Path(self.match_lengths) if self.match_lengths else None,
            "prompt": Path(self.prompt) if self.prompt else None,
        }

    def result_options(self) -> dict[str, Any]:
        """The fields that decide what a run writes (its manifest's options): not the device."""
        run_only = ("device",)
        return {k: v for k, v in self.to_dict().items() if k not in run_only}
