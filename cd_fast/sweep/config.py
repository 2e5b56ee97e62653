"""SweepConfig: the grid (methods x criteria x granularities x levels x budgets, per domain) and
the settings every cell shares (one student, the same training and evaluation); `grid_cells`
expands the grid into the cells that make sense (a criterion only where its method takes it, a
granularity only for step pruning, a level only for rewriting)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from cd_fast.compress.criteria import CRITERIA, METHOD_CRITERIA
from cd_fast.compress.units import GRANULARITIES
from cd_fast.config import check_ranges, option
from cd_fast.eval.grade import GRADERS

GRID, TRAIN, EVAL = "the grid", "training (the same for every cell)", "evaluation"
ORIGINAL = "original"


@dataclass(frozen=True)
class Cell:
    """One point of the grid: a compressed set, the student trained on it, its evaluation."""

    method: str
    budget: float
    criterion: str | None = None
    granularity: str | None = None
    level: int | None = None

    @property
    def name(self) -> str:
        """Unique within a grid: step-value-flow@0.3, step-role@0.3 (its default sentences),
        step-value-flow-sentence@0.3, token-surprisal@0.5, rewrite-L2@0.5, truncate@0.3."""
        parts = [self.method]
        if self.criterion:
            parts.append(self.criterion)
        if self.granularity and self.granularity != default_granularity(self.criterion):
            parts.append(self.granularity)
        if self.level is not None:
            parts.append(f"L{self.level}")
        return f"{'-'.join(parts)}@{self.budget:g}"

    @property
    def family(self) -> str:
        """The cell's name without its budget: one curve of the plots."""
        return self.name.rsplit("@", 1)[0]

    def compress_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {}
        if self.criterion:
            options["criterion"] = self.criterion
        if self.granularity:
            options["granularity"] = self.granularity
        if self.level is not None:
            options["level"] = self.level
        return options


def default_granularity(criterion: str | None) -> str:
    """Step pruning's unit when none is asked: sentences for the role criteria (a paragraph
    mixes roles), paragraphs otherwise (CompressConfig's rule)."""
    return "sentence" if criterion and criterion.startswith("role") else "paragraph"


@dataclass
class SweepConfig:
    """How `cdfast sweep` runs; CLI flags map one to one."""

    student: str = option(
        help="The student's initial weights (a folder or hub id): every cell trains a copy of "
        "them, and the original traces train the baseline cell."
    )
    methods: list[str] = option(
        default_factory=lambda: ["token", "step", "truncate"],
        choices=tuple(METHOD_CRITERIA),
        group=GRID,
        metavar="METHOD",
        help="Compression methods: token and step pruning (by each criterion), truncate (the "
        "head of each trace), rewrite (an instruct model, at each level; needs --rewriter).",
    )
    criteria: list[str] = option(
        default_factory=lambda: ["surprisal", "value-flow"],
        group=GRID,
        metavar="CRITERION",
        help="Importance criteria; each runs with the methods that take it (token: surprisal, "
        "entropy, random; step: value-flow, surprisal, entropy, answer-delta, role, "
        "role+value-flow, role+surprisal, random); METHOD:CRITERION (token:surprisal) runs it "
        "with that method only.",
    )
    granularities: list[str] = option(
        default_factory=list,
        choices=GRANULARITIES,
        group=GRID,
        metavar="UNIT",
        help="Step pruning's units (paragraph, sentence); default: each criterion's own "
        "(sentence for the role criteria, paragraph otherwise).",
    )
    levels: list[int] = option(
        default_factory=lambda: [2],
        choices=(1, 2, 3),
        group=GRID,
        metavar="LEVEL",
        help="Rewriting's restructuring levels: 1 deletes words only, 2 a concise rewrite "
        "keeping every step and number, 3 a draft of a few words per step.",
    )
    budgets: list[float] = option(
        default_factory=lambda: [0.3, 0.5],
        above=0,
        maximum=1,
        group=GRID,
        metavar="B",
        help="Fractions of each trace's tokens kept; every cell of the grid runs at each.",
    )
    domains: list[str] = option(
        default_factory=list,
        group=GRID,
        metavar="DOMAIN",
        help="Keep only records whose meta.domain is one of these (training and evaluation); "
        "the tables break every cell down by domain whenever the records carry one.",
    )
    agreement_criteria: list[str] = option(
        default_factory=list,
        group=GRID,
        metavar="CRITERION",
        help="Step criteria compared in the agreement table (default: the grid's step "
        "criteria); comparing trains nothing, so it may name criteria the grid does not run.",
    )
    scorer: str = option(
        ORIGINAL,
        group=GRID,
        help="The LM whose scores the surprisal and entropy criteria read (computed once for "
        "the whole grid): 'original' (the student trained on the original traces) or a model.",
    )
    rewriter: str | None = option(
        None, group=GRID, help="rewrite cells: the instruct model (see `cdfast compress`)."
    )
    explain: bool = option(
        False,
        group=GRID,
        help="Store what each compressed set dropped and why (`cdfast report --html OUT`).",
    )
    learning_rate: float = option(1e-4, above=0, group=TRAIN, help="Peak learning rate.")
    epochs: float = option(2.0, above=0, group=TRAIN, help="Epochs over the original traces.")
    tokens_per_step: int = option(
        16384,
        minimum=1,
        group=TRAIN,
        help="The original cell's tokens per optimizer step. A compressed cell's step is scaled "
        "by its share of the tokens, so every cell takes the same steps over the same traces "
        "per step and only the traces' content differs.",
    )
    max_seq_length: int = option(
        4096, minimum=8, group=TRAIN, help="Training samples are cut at this many tokens."
    )
    seed: int = option(0, group=TRAIN, help="Training seed (the same for every cell).")
    device: str | None = option(
        None, group=TRAIN, help="cuda or cpu (default: cuda when available)."
    )
    max_new_tokens: int = option(
        1024, minimum=1, group=EVAL, help="The students' generation cap on the held-out set."
    )
    eval_batch_size: int = option(32, minimum=1, group=EVAL, help="Questions generated together.")
    grader: str | None = option(
        None,
        choices=GRADERS,
        group=EVAL,
        help="Grade every answer this way instead of by each record's `grader` (see `cdfast "
        "eval`).",
    )
    holdout: int = option(
        100,
        minimum=1,
        group=EVAL,
        help="Without --eval: hold out the last this many records with a gold answer (at most "
        "a fifth of them) as the evaluation set.",
    )

    def __post_init__(self) -> None:
        if not self.student:
            raise ValueError("SweepConfig.student: name the student's initial weights")
        check_ranges(self)
        for spec in self.criteria:
            method, _, criterion = spec.rpartition(":")
            if criterion not in CRITERIA or (
                method and criterion not in METHOD_CRITERIA.get(method, ())
            ):
                raise ValueError(
                    f"criterion {spec!r}: expected one of {', '.join(CRITERIA)}, or "
                    "METHOD:CRITERION with a criterion that method takes"
                )
        unknown = [c for c in self.agreement_criteria if c not in METHOD_CRITERIA["step"]]
        if unknown:
            raise ValueError(
                f"agreement criteria {unknown}: expected step criteria "
                f"({', '.join(METHOD_CRITERIA['step'])})"
            )
        if "rewrite" in self.methods and not self.rewriter:
            raise ValueError("--methods rewrite needs --rewriter MODEL (the instruct model)")
        if not grid_cells(self):
            raise ValueError(
                f"the grid is empty: no criterion of {self.criteria} applies to the methods "
                f"{self.methods} (token: {', '.join(METHOD_CRITERIA['token'])}; step: "
                f"{', '.join(METHOD_CRITERIA['step'])})"
            )

    def shared_options(self) -> dict[str, Any]:
        """The settings every cell shares (a run's manifest): the grid may grow on --resume,
        these may not change."""
        grid = ("methods", "criteria", "granularities", "levels", "budgets", "agreement_criteria")
        speed = ("device", "eval_batch_size")  # how fast, not what
        return {k: v for k, v in asdict(self).items() if k not in (*grid, *speed)}


def grid_cells(config: SweepConfig) -> list[Cell]:
    """Every meaningful cell of the grid, budget by budget."""
    cells = []
    for budget in config.budgets:
        for method in config.methods:
            if method == "truncate":
                cells.append(Cell(method, budget))
            elif method == "rewrite":
                cells += [Cell(method, budget, level=level) for level in config.levels]
            else:
                for criterion in criteria_of(config, method):
                    units = (config.granularities or [None]) if method == "step" else [None]
                    cells += [Cell(method, budget, criterion, unit) for unit in units]
    return list(dict.fromkeys(cells))


def criteria_of(config: SweepConfig, method: str) -> list[str]:
    """The grid's criteria that run with `method` (bare ones with every method taking them)."""
    found = []
    for spec in config.criteria:
        only, _, criterion = spec.rpartition(":")
        if only in ("", method) and criterion in METHOD_CRITERIA[method]:
            found.append(criterion)
    return list(dict.fromkeys(found))
