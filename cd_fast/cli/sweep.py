"""`cdfast sweep`: the grid of criterion x granularity x restructuring level x budget on one
trace set and one student, with the paper-style tables."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from cd_fast.cli.common import INPUT_HELP, add_input_arguments, check_output_paths, output_folder
from cd_fast.config import add_config_arguments, config_from_args
from cd_fast.data import ReadConfig
from cd_fast.generate import BackendConfig
from cd_fast.sweep import SweepConfig, SweepStopped, run_sweep

NAME = "sweep"
HELP = "the compression grid (criterion x granularity x level x budget), a student per cell"
DESCRIPTION = f"""Runs every cell of a grid on one trace set and one student, each cell from the
same initial weights (--student) with the same training steps, and evaluates each on the same
held-out questions (--eval, or the last --holdout records with a gold answer):

  cells   --methods x (--criteria a method takes x --granularities for step pruning, or
          --levels for rewrite) x --budgets, plus the original traces (the baseline).
          token-surprisal@0.3 is token pruning by surprisal keeping 30 % of the tokens;
          step-value-flow@0.5 step pruning by value flow; step-role-paragraph@0.3 the role
          criterion on paragraphs (a granularity shows when it is not the criterion's
          default); rewrite-L2@0.5 rewriting at level 2; truncate@0.3 the traces' heads.
  once    the scorer's token scores (surprisal, entropy criteria), computed for the grid;
          each compressed set, built once and kept.
  resume  a cell is done when cells/CELL.json is written. After a kill or a stop signal
          (SIGTERM, Ctrl-C: exit 143 / 130 after a checkpoint), rerun with --resume: finished
          cells are never redone, the unfinished one continues (its set if built, training
          from its checkpoint, eval from its predictions). --resume with more --budgets or
          --criteria adds cells; changing a shared setting (student, training, eval, the
          data) is refused.
  domains records' meta.domain: each domain gets its own table, plots and summary lines
          (--domains keeps only those); each answer is graded by its record's grader.

Output (-o OUT):
  report.md              per domain: the table (asked budget, training tokens, the student's
                         output tokens, training time, accuracy, accuracy per 1k tokens, each
                         also as a ratio to the original), the plots, the condition-aware
                         summary (per domain and budget, the cell that keeps the most accuracy
                         per token), criterion agreement and the step roles kept
  report-0-DOMAIN.png    accuracy against training tokens and against output tokens
  agreement.md           mean Jaccard of the steps kept by each pair of step criteria, per budget
  sweep.json             every cell's numbers (the report's source: `cdfast report OUT`)
  cells/CELL.json        one cell's row; data/CELL.jsonl and .summary.json its compressed set
  train-CELL/, eval-CELL/  its student (final/) and its `cdfast eval` run; scores/ the scores

examples:
  cdfast sweep traces.jsonl --student Qwen/Qwen2.5-0.5B-Instruct --eval test.jsonl -o sweep \\
      --criteria surprisal value-flow role --budgets 0.3 0.5 0.7
  cdfast sweep ../shared/data/qwen3-8b-thinking/qwen3-8b__think-on.jsonl \\
      --prompts ../shared/data/qwen3-8b-thinking/items.json --student S -o sweep-qwen3 \\
      --methods step rewrite --criteria value-flow --levels 1 2 3 --rewriter R
  cdfast sweep traces.jsonl --student S -o sweep --resume    # after a kill

{INPUT_HELP}"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_input_arguments(parser)
    parser.add_argument("-o", "--output", type=output_folder, required=True, help="sweep folder")
    parser.add_argument(
        "--eval",
        type=Path,
        help="held-out questions (with gold answers or constraints) every student answers",
    )
    parser.add_argument("--resume", action="store_true", help="continue a stopped sweep")
    add_config_arguments(parser, SweepConfig, title="the sweep (SweepConfig)")
    add_config_arguments(parser, BackendConfig, title="the rewriter's backend (rewrite cells)")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    config = config_from_args(SweepConfig, args)
    read = config_from_args(ReadConfig, args)
    check_output_paths(args.output, args.input, args.eval, read.prompts)
    try:
        run_sweep(
            args.input,
            args.output,
            config,
            eval_source=args.eval,
            read=read,
            resume=args.resume,
            backend=config_from_args(BackendConfig, args),
        )
    except SweepStopped as stopped:
        print(
            f"cdfast sweep: {stopped}: rerun the same command with --resume to continue",
            file=sys.stderr,
        )
        return 128 + stopped.signum
    return 0
