"""Grading a model's response. `grade_record` is the entry point: each record names its grader
(math by default: `math-verify` symbolic equivalence, numbers with thousands separators,
fractions, LaTeX, intervals, sets...; numeric, text, choice and instruction constraints for
general-domain tasks)."""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

from cd_fast.formats import boxed_spans, extract_answer, response_section

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


# --- general-domain grading: one entry point, a grader per record -------------------------

GRADERS = ("math", "numeric", "text", "choice", "constraint")
"""math: math-verify equivalence (the default) | numeric: the stated number equals the gold
(number words and thousands separators read) | text: normalised exact match with the gold or an
accepted alias (a reply of at most 12 words that contains it counts) | choice: exactly one option
named, and it is the gold (a letter "C", "(C)", "Answer: C", \\boxed{C}, or the option's text) |
constraint: the reply meets the record's `check` with its `params` (CHECKS)."""
SHORT_REPLY_WORDS = 12  # a longer reply that merely mentions the gold is not an answer
_WORD_NUMBERS = {
    word: i
    for i, word in enumerate(
        re.findall(
            r"\w+",
            "zero one two three four five six seven eight nine ten eleven twelve thirteen "
            "fourteen fifteen sixteen seventeen eighteen nineteen twenty",
        )
    )
}
_FENCE = re.compile(r"^\s*```[\w-]*\s*\n(.*?)\n\s*```\s*$", re.DOTALL)
# "C", "(C) blue", "C) blue", "C. blue", "option C"; not "A ripe banana" (an article)
_LETTER = re.compile(r"^(?:option\s+|choice\s+)?(?:\(([a-z])\)|([a-z])(?:[.):]|$))", re.IGNORECASE)
_ANSWER_IS = re.compile(r"\banswer\b[*_]*\s*(?::|-|\bis\b)\s*(.*)", re.IGNORECASE)
_NUMBER_TEXT = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")


def normalize_text(text: str) -> str:
    """Lower case, accents and punctuation dropped, spaces collapsed, a leading article dropped:
    "The  Brasília." and "brasilia" are equal."""
    text = unicodedata.normalize("NFKD", text or "")
    text = "".join(c for c in text if not unicodedata.combining(c)).lower().replace("’", "'")
    text = " ".join(re.sub(r"[^a-z0-9' ]+", " ", text).split())
    return re.sub(r"^(?:the|a|an) ", "", text)


def stated_answer(prediction: str) -> str:
    """What a reply gives as its answer: after </think>, code fences dropped; the last
    \\boxed{}, else the last "Answer: ..." line, else the last non-empty line."""
    text = _unfenced(response_section(prediction or ""))
    spans = boxed_spans(text)
    if spans:
        start, end = spans[-1]
        return text[start:end].strip()
    stated = [m.group(1).strip("*_ `").rstrip(".") for m in _ANSWER_IS.finditer(text)]
    if any(stated):
        return [s for s in stated if s][-1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _unfenced(text: str) -> str:
    match = _FENCE.match(text)
    return match.group(1) if match else text


def _contains(haystack: str, needle: str) -> bool:
    """`needle` as whole words in `haystack` (both normalised)."""
    pattern = rf"(?<![a-z0-9]){re.escape(needle)}(?![a-z0-9])"
    return bool(needle) and re.search(pattern, haystack) is not None


def _number(text: str) -> float | None:
    words = normalize_text(text).split()
    if words and words[0] in _WORD_NUMBERS and not _NUMBER_TEXT.search(text):
        return float(_WORD_NUMBERS[words[0]])
    match = _NUMBER_TEXT.search(text or "")
    if not match:
        return None
    number = match.group(0).replace(",", "")
    numerator, _, denominator = number.partition("/")
    try:
        return float(numerator) / float(denominator) if denominator else float(numerator)
    except (ValueError, ZeroDivisionError):
        return None


def _grade_numeric(answer: str, gold: str, accept: list[str], prediction: str) -> bool:
    if any(normalize_text(answer) == normalize_text(alias) for alias in accept):
        return True
    got, want = _number(answer), _number(gold)
    if got is None or want is None or "\\" in answer + gold:
        return grade(prediction, gold)  # LaTeX (\frac{3}{4}) and the like: math-verify
    return abs(got - want) <= 1e-9 * max(1.0, abs(want))


def _grade_text(answer: str, gold: str, accept: list[str]) -> bool:
    got = normalize_text(answer)
    if not got:
        return False
    short = len(got.split()) <= SHORT_REPLY_WORDS
    for want in map(normalize_text, [gold, *accept]):
        if want and (got == want or (short and _contains(got, want))):
            return True
    return False


def _option_names(options: Any) -> dict[str, list[str]]:
    """An option's key and the texts that name it. `options` is a list of option texts (keys
    A, B, ...), {key: text} or {key: [synonyms]}."""
    if isinstance(options, list):
        options = {chr(ord("A") + i): text for i, text in enumerate(options)}
    if not isinstance(options, dict) or not options:
        raise ValueError(f"choice: 'options' must be a list or an object, got {options!r}")
    return {
        str(key): [str(key), *(names if isinstance(names, list) else [names])]
        for key, names in options.items()
    }


def _grade_choice(answer: str, gold: str, options: Any) -> bool:
    names = _option_names(options)
    match = _LETTER.match(answer.strip())
    letter = (match.group(1) or match.group(2)).upper() if match else None
    single_letters = all(len(key) == 1 and key.isalpha() for key in names)
    if single_letters and letter in {k.upper() for k in names}:
        named = {next(k for k in names if k.upper() == letter)}
    else:
        got = normalize_text(answer)
        named = {
            key
            for key, texts in names.items()
            for text in texts
            if (len(text) > 1 or not single_letters) and _contains(got, normalize_text(text))
        }
    if len(named) != 1:
        return False  # none named, or several: not an answer
    (key,) = named
    return normalize_text(gold) in {normalize_text(text) for text in names[key]}


def _words(text: str) -> list[str]:
    return [w for w in text.split() if re.search(r"[A-Za-z0-9]", w)]


def _bare(word: str) -> str:
    return re.sub(r"[^A-Za-z0-9']", "", word).lower()


def _json_keys(text: str, keys: list[str], value: Any = 1) -> bool:
    try:
        pairs = json.loads(text, object_pairs_hook=list)
    except ValueError:
        return False
    return (
        isinstance(pairs, list)
        and [k for k, _ in pairs] == keys
        and all(v == value and type(v) is type(value) for _, v in pairs)
    )


CHECKS: dict[str, Callable[..., bool]] = {
    "word_count": lambda text, n: len(_words(text)) == n,
    "min_words": lambda text, n: len(_words(text)) >= n,
    "max_words": lambda text, n: len(_words(text)) <= n,
    "repeat_word": lambda text, word, n: text.rstrip(".").lower() == " ".join([word.lower()] * n),
    "upper_csv": lambda text, n: (
        len(parts := [p.strip() for p in text.rstrip(".").split(",")]) == n
        and all(p.isalpha() and p.isupper() for p in parts)
    ),
    "json_keys": _json_keys,
    "exact_chars": lambda text, char, n: text == char * n,
    "desc_range": lambda text, lo, hi: (
        text.rstrip(".").replace(" ", "") == ",".join(map(str, range(hi, lo - 1, -1)))
    ),
    "start_end": lambda text, start, end: (
        len(words := _words(text)) >= 2
        and _bare(words[0]) == start.lower()
        and _bare(words[-1]) == end.lower()
    ),
    "forbidden_letter": lambda text, letter, min_words=1: (
        len(_words(text)) >= min_words and letter.lower() not in text.lower()
    ),
}
"""Instruction constraints, by `check` name; `params` are their keyword arguments. The text is the
whole reply after </think>, stripped, code fences dropped. json_keys: exactly these keys in this
order, each value `value` (default the integer 1)."""


def _field(record: Any, name: str) -> Any:
    """A record's field: top level first, then its meta (readers keep unknown fields there)."""
    if isinstance(record, Mapping):
        if name == "gold" and "gold" not in record:
            return record.get("answer")  # a prompts file's gold is its `answer`
        value = record.get(name)
        meta = record.get("meta")
    else:
        value = getattr(record, name, None)
        meta = getattr(record, "meta", None)
    if value is None and isinstance(meta, Mapping):
        value = meta.get(name)
    return value


def record_grader(record: Any, grader: str | None = None) -> str:
    """The grader a record asks for: `grader` when given (--grader), else its `grader` field,
    else math; an unknown name is refused."""
    name = grader or _field(record, "grader") or "math"
    if name not in GRADERS:
        raise ValueError(f"unknown grader {name!r}: expected one of {', '.join(GRADERS)}")
    return name


def gradable(record: Any, grader: str | None = None) -> bool:
    """Whether a record can be graded: a gold answer, or a constraint to check."""
    if record_grader(record, grader) == "constraint":
        return bool(_field(record, "check"))
    gold = _field(record, "gold")
    return gold is not None and bool(str(gold).strip())


def grade_record(record: Any, prediction: str, grader: str | None = None) -> bool:
    """True when `prediction` answers `record` correctly. The record (a Trace or a dict) gives
    its `gold`, `grader` (GRADERS; default math), `accept` (aliases of the gold), `options`
    (choice), and `check` and `params` (constraint), at its top level or in its meta; `grader`
    overrides the record's own."""
    name = record_grader(record, grader)
    if not prediction or not gradable(record, name):
        return False
    if name == "constraint":
        check = _field(record, "check")
        if check not in CHECKS:
            raise ValueError(f"unknown check {check!r}: expected one of {', '.join(CHECKS)}")
        text = _unfenced(response_section(prediction)).strip()
        params = _field(record, "params") or {}
        try:
            return bool(text) and bool(CHECKS[check](text, **params))
        except TypeError as error:
            raise ValueError(f"check {check!r}: bad params {params!r} ({error})") from None
    gold = str(_field(record, "gold")).strip()
    if name == "math":
        return grade(prediction, gold)
    accept = [str(a) for a in _field(record, "accept") or []]
    answer = stated_answer(prediction)
    if name == "numeric":
        return _grade_numeric(answer, gold, accept, prediction)
    if name == "text":
        return _grade_text(answer, gold, accept)
    return _grade_choice(answer, gold, _field(record, "options") or {})
