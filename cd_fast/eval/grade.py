"""Grading a model's response against a gold answer with `math-verify` (symbolic equivalence:
numbers with thousands separators, fractions, LaTeX, intervals, sets...)."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from cd_fast.formats import extract_answer, response_section

_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


def final_answer_text(prediction: str) -> str:
    """The part of a response that states the answer: after </think> when present; the
    \\boxed{}, "Answer:" or "####" answer when there is one, else the whole remaining text."""
    text = response_section(prediction)
    if "\\boxed" in text:
        return text  # math-verify extracts \boxed{} itself, nested braces and all
    answer = extract_answer(text)
    return answer if answer is not None else text


@lru_cache(maxsize=65536)
def _parse(text: str) -> Any:
    from math_verify import parse

    return parse(_THOUSANDS.sub("", text))


def _parse_gold(gold: str) -> Any:
    """Gold answers are bare LaTeX ("3\\sqrt{13}", "6 - 5i"): read them as math first (plain
    parsing would pick out the leading number), then as text."""
    gold = gold.strip()
    parsed = _parse(gold if gold.startswith("$") else f"${gold}$")
    return parsed or _parse(gold)


def grade(prediction: str, gold: str) -> bool:
    """True when the response's final answer equals `gold` (math-verify equivalence)."""
    from math_verify import verify

    if not prediction or gold is None or not str(gold).strip():
        return False
    expected = _parse_gold(str(gold))
    answer = final_answer_text(prediction)
    got = _parse(answer)
    if not got and answer is not prediction:
        got = _parse(prediction)
    if not expected or not got:
        return False
    return bool(verify(expected, got))
