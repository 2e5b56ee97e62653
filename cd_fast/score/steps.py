"""Step scores: map the scorer's tokens onto the segmenter's steps and reduce per step."""

from __future__ import annotations

import numpy as np


def token_steps(token_offsets: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """int64 [n_tokens]: the step holding each token's first character (steps cover the text)."""
    if not len(steps):
        return np.zeros(len(token_offsets), dtype=np.int64)
    index = np.searchsorted(steps[:, 0], token_offsets[:, 0], side="right") - 1
    return np.clip(index, 0, len(steps) - 1)


def step_reduce(values: np.ndarray, step_of_token: np.ndarray, n_steps: int) -> dict:
    """Per-step sum, mean and max of token values (steps without tokens: 0)."""
    total = np.bincount(step_of_token, weights=values, minlength=n_steps).astype(np.float32)
    count = np.bincount(step_of_token, minlength=n_steps)
    if np.any(step_of_token[1:] < step_of_token[:-1]):  # group each step's tokens together
        values = values[np.argsort(step_of_token, kind="stable")]
    held = count > 0
    peak = np.zeros(n_steps, dtype=np.float32)
    if held.any():  # each step's tokens are one run: a segmented max (ufunc.at is ~10x slower)
        peak[held] = np.maximum.reduceat(values, (np.cumsum(count) - count)[held])
    mean = np.divide(total, count, out=np.zeros(n_steps, dtype=np.float32), where=count > 0)
    return {"sum": total, "mean": mean.astype(np.float32), "max": peak}


def step_scores(
    token_offsets: np.ndarray, steps: np.ndarray, surprisal: np.ndarray, entropy: np.ndarray
) -> dict[str, np.ndarray]:
    """step_{surprisal,entropy}_{sum,mean,max} (float32 [k]) of each step."""
    owner = token_steps(token_offsets, steps)
    scores = {}
    for name, values in (("surprisal", surprisal), ("entropy", entropy)):
        for reduction, array in step_reduce(values, owner, len(steps)).items():
            scores[f"step_{name}_{reduction}"] = array
    return scores
