"""Token-importance scoring: surprisal and entropy per token and per step.

scorer.py        the Scorer (teacher-forced, packed windows, fused LM-head reduction) and
                 ScoreConfig; answer-delta through answer_delta.py
steps.py         tokens onto steps, per-step sum/mean/max
store.py         the score store: Parquet shards + manifest.json (ScoreStore)
job.py           `cdfast score` as a resumable run (ScoreRun, score_file)
protect.py       which characters token pruning protects (symbols, markdown decoration)
"""

from cd_fast.score.job import score_file
from cd_fast.score.protect import protected_chars
from cd_fast.score.scorer import ScoreConfig, Scorer
from cd_fast.score.steps import step_reduce, step_scores, token_steps
from cd_fast.score.store import RecordScores, ScoreStore

__all__ = [
    "RecordScores",
    "ScoreConfig",
    "ScoreStore",
    "Scorer",
    "protected_chars",
    "score_file",
    "step_reduce",
    "step_scores",
    "token_steps",
]
