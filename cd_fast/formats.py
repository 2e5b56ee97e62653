"""The trace format, in one place: think tags, the chat prompt, the supervised target template,
splitting a completion into reasoning and answer, the final answer a trace leads to, and where a
text states it.

Training writes each record as  chat_prompt(question) + target_template(trace, answer) + EOS;
scoring and answer-delta condition on the same text, so a trace is scored exactly as the
student will see it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

from cd_fast.runtime import warn_once

logger = logging.getLogger(__name__)

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
DEFAULT_TARGET_TEMPLATE = f"{THINK_OPEN}\n{{trace}}\n{THINK_CLOSE}\n\n{{answer}}"

_BOXED = re.compile(r"\\boxed\s*\{")
_ANSWER_LINE = re.compile(r"(?:final answer|answer)\s*(?:is|:)\s*(.+)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")
_NUMERIC_ANSWER = re.compile(r"^-?[\d,]*\.?\d+(?:/\d+)?$")


def chat_prompt(tokenizer: Any, messages: str | Sequence[Mapping[str, str]]) -> str:
    """A question (a user turn) or chat messages through the tokenizer's chat template, ready
    for the reply (the plain contents and a blank line for tokenizers without a template,
    logged once)."""
    turns = [{"role": "user", "content": messages}] if isinstance(messages, str) else messages
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            list(turns), tokenize=False, add_generation_prompt=True
        )
    warn_once(
        logger,
        "the tokenizer (%s) has no chat template: prompts are the plain question and a blank "
        "line; set tokenizer.chat_template to use one",
        getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__,
    )
    return "\n\n".join(turn["content"] for turn in turns) + "\n\n"


def check_target_template(template: str) -> None:
    """A target template holds {trace} once (and {answer} at most once), nothing else in braces."""
    if template.count("{trace}") != 1:
        raise ValueError(f"target_template must contain {{trace}} exactly once, got {template!r}")
    if "{answer}" in template.split("{trace}", 1)[0]:
        raise ValueError(f"target_template must put {{answer}} after {{trace}}, got {template!r}")
    try:
        template.format(trace="", answer="")
    except (KeyError, IndexError, ValueError) as error:
        raise ValueError(
            f"target_template may only use {{trace}} and {{answer}} (double other braces): "
            f"{template!r} ({error})"
        ) from None


def render_target(template: str, trace: str, answer: str | None) -> str:
    """The supervised target of one record (EOS not included)."""
    return template.format(trace=trace, answer=answer or "")


def target_prefix(template: str) -> str:
    """The target text before the trace ("<think>\\n" by default): the context a trace's first
    token is scored in."""
    return template.split("{trace}", 1)[0].format()


def target_suffix(template: str, answer: str) -> str:
    """The target text after the trace with `answer` filled in ("\\n</think>\\n\\n" + answer by
    default); a template without {answer} gets the answer appended."""
    tail = template.split("{trace}", 1)[1]
    return tail.format(answer=answer) if "{answer}" in tail else tail.format() + answer


def split_completion(text: str) -> tuple[str, str | None]:
    """``<think>reasoning</think>answer`` -> (reasoning, answer or None). A missing ``</think>``
    (a completion cut off by the length limit) leaves everything after ``<think>`` as reasoning."""
    close = text.find(THINK_CLOSE)
    head, tail = (text, None) if close < 0 else (text[:close], text[close + len(THINK_CLOSE) :])
    head = head.lstrip()
    if head.startswith(THINK_OPEN):
        head = head[len(THINK_OPEN) :]
    answer = tail.strip() if tail is not None else None
    return head.strip(), answer or None


def response_section(response: str) -> str:
    """The part of a generated response after its reasoning (all of it without </think>)."""
    return response.rsplit(THINK_CLOSE, 1)[-1]


def boxed_spans(text: str) -> list[tuple[int, int]]:
    """[start, end) of every \\boxed{...} body, braces balanced."""
    spans = []
    for match in _BOXED.finditer(text):
        depth, i = 1, match.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            spans.append((match.end(), i - 1))
    return spans


def extract_answer(text: str | None) -> str | None:
    """The final answer a text states: the last \\boxed{}, else an "Answer:" line, else the
    text after "####", else the last number."""
    if not text:
        return None
    boxed = boxed_spans(text)
    if boxed:
        start, end = boxed[-1]
        return text[start:end].strip() or None
    lines = [m.group(1).strip().rstrip(".") for m in _ANSWER_LINE.finditer(text)]
    if lines and lines[-1]:
        return lines[-1].strip("*$ ")
    if "####" in text:
        return text.rsplit("####", 1)[1].strip() or None
    numbers = _NUMBER.findall(text)
    return numbers[-1].rstrip(".,") if numbers else None


def final_answer(gold: str | None, response: str | None, reasoning: str) -> str | None:
    """The answer a record leads to: its gold answer, else the one its response states, else
    the one its reasoning ends on. Scoring protects it, compression keeps it."""
    return gold or extract_answer(response) or extract_answer(reasoning)


def answer_span(text: str, answer: str | None) -> tuple[int, int] | None:
    """Character span of the last place `text` states `answer` (numbers match whole, so 72 is
    not found inside 172 or 7.25, and thousands separators are ignored), or None."""
    if not answer or not answer.strip():
        return None
    answer = answer.strip()
    if _NUMERIC_ANSWER.match(answer):
        digits = answer.replace(",", "")
        number = re.compile(r"(?<![\d.])" + ",?".join(map(re.escape, digits)) + r"(?!\d|\.\d)")
        matches = list(number.finditer(text))
        return matches[-1].span() if matches else None
    at = text.rfind(answer)
    return (at, at + len(answer)) if at >= 0 else None


def answer_position(text: str, answer: str | None) -> int | None:
    """Where the last statement of `answer` in `text` starts (see `answer_span`), or None."""
    span = answer_span(text, answer)
    return span[0] if span else None


def normalise_answer(text: str) -> str:
    """`text` without spacing, dollar signs and LaTeX spacing or sizing commands."""
    return re.sub(r"[\s$]|\\[,!;: ]", "", text).replace("\\left", "").replace("\\right", "")


def contains_answer(text: str, answer: str | None) -> bool:
    """True when `text` states `answer`, literally or up to spacing and LaTeX spacing."""
    if not answer or not answer.strip():
        return False
    if answer_position(text, answer) is not None:
        return True
    target = normalise_answer(answer)
    return (
        bool(target)
        and not _NUMERIC_ANSWER.match(answer.strip())
        and target in normalise_answer(text)
    )
