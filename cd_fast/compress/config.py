"""CompressConfig: the three knobs (criterion, restructuring level, budget) and their options."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

METHODS = ("token", "step", "truncate", "rewrite")
TOKEN_CRITERIA = ("surprisal", "entropy", "random")
STEP_CRITERIA = ("surprisal", "entropy", "answer-delta", "random")
LOST_ANSWER_POLICIES = ("expand", "original", "drop")
BACKENDS = ("local", "http", "vllm")


@dataclass
class CompressConfig:
    """How `cdfast compress` runs; CLI flags map one to one."""

    method: str
    """token | step | truncate | rewrite."""
    budget: float | None = 0.3
    """Fraction of each trace's tokens to keep (counted with the student's tokenizer)."""
    target_tokens: int | None = None
    """Keep at most this many tokens per trace instead of a fraction."""
    scores: str | None = None
    """Folder written by `cdfast score` for these traces (token/step pruning, adaptive)."""
    scorer: str | None = None
    """Scorer LM to compute scores on the fly (folder, hub id or .gguf) when --scores is absent."""
    tokenizer: str | None = None
    """The student's tokenizer, which counts the budget's tokens (default: the scorer's)."""
    device: str | None = None
    """cuda or cpu for the scorer and a local rewriter (default: cuda when available)."""
    criterion: str | None = None
    """Importance: token: surprisal | entropy | random; step: surprisal (mean step surprisal),
    entropy (summed step entropy), answer-delta (answer loss increase without the step), random.
    Default: surprisal."""
    adaptive: bool = False
    """Spend more of the budget on harder traces (longer, higher mean surprisal) while holding
    the dataset-level ratio."""
    protect: bool = True
    """Token pruning keeps numbers, operators, LaTeX math and the final answer."""
    on_lost_answer: str = "expand"
    """When the compressed trace lost the original's final answer: "expand" puts the sentence
    that states it back, "original" keeps the whole original trace, "drop" drops the record."""
    keep_original: bool = False
    """Store the uncompressed trace in meta.original_trace."""
    seed: int = 0
    """Seeds the random criterion (per record: seed + record id)."""
    level: int = 2
    """rewrite: 1 deletes words only, 2 concise rewrite keeping every step and number, 3 a
    draft of a few words per step."""
    prompt: str | None = None
    """rewrite: a prompt template file ({question}, {trace}, {target_words}) overriding the
    level's packaged one."""
    backend: str = "local"
    """rewrite: local (transformers generate), http (OpenAI-compatible server), vllm (offline)."""
    rewriter: str | None = None
    """rewrite: the instruct model (folder, hub id or .gguf for local/vllm; the served model
    name for http)."""
    base_url: str = "http://127.0.0.1:8000/v1"
    """rewrite, http: the server's OpenAI-compatible base URL."""
    api_key: str | None = None
    """rewrite, http: bearer token (default: $OPENAI_API_KEY when set)."""
    concurrency: int = 8
    """rewrite, http: requests in flight."""
    timeout: float = 300.0
    """rewrite, http: seconds per request."""
    retries: int = 4
    """rewrite, http: attempts after the first, with exponential backoff."""
    max_new_tokens: int | None = None
    """rewrite: generation cap (default: 1.5x the trace's token budget, at least 64)."""
    batch_size: int = 64
    """Records per batch: scored together, budgeted together (a larger batch holds the
    dataset-level ratio more tightly), written together (the unit of resume)."""
    generation_batch_size: int = 8
    """rewrite, local: sequences per generate() call."""
    match_lengths: str | None = None
    """truncate: a JSONL of another method's output; each record keeps as many tokens as its
    counterpart (by id) there."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.criterion is None and self.method in ("token", "step"):
            self.criterion = "surprisal"
        allowed = {"token": TOKEN_CRITERIA, "step": STEP_CRITERIA}.get(self.method)
        if allowed is not None and self.criterion not in allowed:
            raise ValueError(f"--criterion for {self.method} must be one of {allowed}")
        if allowed is None and self.criterion is not None:
            raise ValueError(f"--criterion does not apply to method {self.method}")
        if self.target_tokens is not None:
            if self.target_tokens <= 0:
                raise ValueError("target_tokens must be > 0")
        elif self.match_lengths is None and not (self.budget and 0 < self.budget <= 1):
            raise ValueError(f"budget must be in (0, 1], got {self.budget}")
        if self.match_lengths is not None and self.method != "truncate":
            raise ValueError("match_lengths applies to method truncate")
        if self.on_lost_answer not in LOST_ANSWER_POLICIES:
            raise ValueError(f"on_lost_answer must be one of {LOST_ANSWER_POLICIES}")
        if self.level not in (1, 2, 3):
            raise ValueError(f"level must be 1, 2 or 3, got {self.level}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}")
        if min(self.concurrency, self.batch_size, self.generation_batch_size) < 1:
            raise ValueError("concurrency and the batch sizes must be >= 1")
        if self.retries < 0 or self.timeout <= 0:
            raise ValueError("retries must be >= 0 and timeout > 0")

    @property
    def needs_scores(self) -> bool:
        """Whether the scorer LM's token scores are needed (random needs only tokens)."""
        return (self.method in ("token", "step") and self.criterion != "random") or self.adaptive

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
