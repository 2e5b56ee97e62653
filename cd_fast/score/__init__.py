"""Token-importance scoring: surprisal and entropy per token and per step, symbol protection."""

from cd_fast.score.job import score_file
from cd_fast.score.protect import protected_chars, protected_tokens
from cd_fast.score.scorer import ScoreConfig, Scorer
from cd_fast.score.steps import step_reduce, step_scores, token_steps
from cd_fast.score.store import RecordScores, ScoreStore

__all__ = [
    "RecordScores",
    "ScoreConfig",
    "ScoreStore",
    "Scorer",
    "protected_chars",
    "protected_tokens",
    "score_file",
    "step_reduce",
    "step_scores",
    "token_steps",
]
