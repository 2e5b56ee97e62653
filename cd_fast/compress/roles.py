"""Step roles: what each sentence of a reasoning trace does, from its wording and its place.

Seven roles (tests/data/roles/RUBRIC.md defines each with examples):

  initialising  the opening, restating the question or its givens, the plan before any result
  deduction     a step forward: a computation, an inference, a recalled fact, a candidate
  verification  re-checking a result already reached (a recap, a recount, "Yes, that's right")
  backtracking  revising or abandoning an earlier step ("Wait, no", "I made a mistake")
  uncertainty   hesitation without new content ("Hmm.", "Is that right?", "I'm not sure")
  exploration   an alternative reading or approach, a hypothesis, and its rejection
  conclusion    stating the final answer, or wrapping up ("So the answer is 670.")

The tagger needs no model: a lexicon of English and Chinese reasoning cues at the head of the
sentence picks the role; where no cue speaks, the sentence's relation to what came before does.
It restates the question when its content words are the question's; it continues a check (no new
number, no forward transition) after a verification cue or once the answer was stated; it redoes
a step after a backtrack, and the deduction right before a backtrack is marked abandoned. Every
sentence gets a confidence (how direct the evidence was). Deterministic, linear in the text.

`tag_roles` / `tag_roles_batch` run in C++ (csrc/roles.hpp, all CPUs, GIL released), which reads
the lexicon below through a small regex engine with `re`'s semantics (csrc/regex.hpp);
`tag_roles_py` is the reference where the rules are written out, and both must agree exactly.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import numpy as np

from cd_fast.compress.backbone import number_value, numbers_in
from cd_fast.formats import answer_position

ROLES = (
    "initialising",
    "deduction",
    "verification",
    "backtracking",
    "uncertainty",
    "exploration",
    "conclusion",
)
INITIALISING, DEDUCTION, VERIFICATION, BACKTRACKING, UNCERTAINTY, EXPLORATION, CONCLUSION = range(
    len(ROLES)
)
CODES = "IDVBUEC"
"""One letter per role, in ROLES order (the labelled test set writes roles with them)."""


@dataclass(frozen=True)
class _Cue:
    """A role's cue phrases, split so that most sentences cost almost nothing: `head` patterns
    are anchored at the sentence's start (tried with `match`, failing at once); `free` ones may
    match anywhere and are searched only in a sentence holding one of `triggers`, substrings
    every free pattern needs (checked once per trace)."""

    role: int
    confidence: float
    head: re.Pattern | None
    free: re.Pattern | None
    triggers: tuple[str, ...] = ()

    def matches(self, sentence: str, triggered: bool) -> bool:
        """Whether the (lowercased) sentence holds the cue; `triggered`: one of its triggers."""
        if self.head is not None and self.head.match(sentence):
            return True
        return triggered and self.free is not None and self.free.search(sentence) is not None


def _join(*patterns: str) -> re.Pattern | None:
    """One pattern for lowercased text (case-insensitive matching is about twice as slow)."""
    return re.compile("|".join(f"(?:{p})" for p in patterns)) if patterns else None


def _cue(role: int, confidence: float, head=(), free=(), triggers: str = "", zh=()) -> _Cue:
    """A _Cue; `triggers` separated by "|", `zh` the Chinese cues (their own triggers)."""
    words = tuple(triggers.split("|")) if triggers else ()
    return _Cue(role, confidence, _join(*head), _join(*free), (*words, *zh))


_LEAD = (
    r"[\W_]*(?:(?:okay|ok|alright|all right|hmm+|wait|so|but|and|oh|well|now|hold on)"
    r"[,.!]*\s+)*"
)
_ZH_WRONG = ("不对", "错了", "算错", "搞错", "弄错", "重新", "更正")
_ZH_UNSURE = ("不确定", "不太确定", "也许", "是不是", "对吗", "对不对", "吗", "糊涂")
_ZH_CHECK = ("验证", "检查", "确认", "核对", "没错", "正确", "没问题")
_ZH_OTHER = ("或者", "另一种", "换个", "假设", "试试")
_ZH_DONE = ("答案是", "所以答案", "最终答案", "综上")

# The cues in the order they are tried (a sentence with two takes the first) and how sure each is.
_CUES = (
    _cue(UNCERTAINTY, 0.9, head=[r"[\W_]*(?:hmm+|wait|hold on|uh+|um+|嗯+|等等|等一下)[\W_]*$"]),
    _cue(
        BACKTRACKING,
        0.85,
        head=[
            _LEAD + r"(?:no|nope)\b[,.!]",
            r"[\W_]*(?:wait|hmm+|oh|oops|hold on)[,.!]*\s+"
            r"(?:no\b|actually\b|that'?s (?:not|wrong))",
        ],
        free=[
            r"\b(?:i (?:think i )?(?:made a mistake|made an error|messed up|miscalculated|misread)"
            r"|that(?:'s| is| was) (?:wrong|incorrect|not (?:right|correct))|scratch that"
            r"|my mistake|i was wrong|let me (?:start over|redo|correct|re-?examine|re-?evaluate"
            r"|re-?calculate|re-?do|reconsider)|correction:|that'?s a mistake)\b",
            "|".join(_ZH_WRONG),
        ],
        triggers=(
            "mistake|error|messed|miscalc|misread|wrong|incorrect|not right|not correct|"
            "scratch|let me|correction"
        ),
        zh=_ZH_WRONG,
    ),
    _cue(
        CONCLUSION,
        0.85,
        head=[
            _LEAD + r"(?:i think )?(?:that'?s|this is) (?:it|the answer|all|correct answer)\b",
            _LEAD + r"(?:i think )?that should (?:be it|do it|be correct|be the answer)\b",
        ],
        free=[
            r"\b(?:the (?:final |correct )?answer (?:is|should be|would be|must be|will be)"
            r"|answer:|final answer|therefore,? the answer|so,? the answer)",
            r"\\boxed",
            r"\b(?:i'?ll (?:format|go with|answer|write|send|present|respond)|time to (?:send|"
            r"answer|respond|write)|i need to end with|end with the (?:specified|required))\b",
            "|".join(_ZH_DONE),
        ],
        triggers="answer|\\boxed|ll |time to|end with",
        zh=_ZH_DONE,
    ),
    _cue(
        UNCERTAINTY,
        0.75,
        head=[
            _LEAD + r"let me think(?: about (?:this|it))?(?: again)?[.!]*$",
            # a statement put as a question: "So Eve can't be in 2?", "Wait, so that's 3 'a's?"
            r"[\W_]*(?:wait|so|but|then|hmm+|or)\b[^?]*\?\s*$",
        ],
        free=[
            r"\b(?:i'?m not (?:sure|certain|entirely (?:sure|certain))|not sure|unsure"
            r"|i'?m confused|am i (?:right|sure|missing)|is (?:that|this) (?:right|correct)\?"
            r"|that can'?t be(?: right)?|(?:doesn'?t|does not|didn'?t) (?:add up|make sense|"
            r"seem right)|i might be wrong|maybe i'?m (?:\w+ing)|i(?:'m| am) (?:mixing|missing|"
            r"overcomplicating|overthinking)|or was it|or is it|i wonder|i'?m not certain"
            r"|maybe i made a mistake|(?:let me|i need to|i should) (?:think|try to (?:think|"
            r"remember|recall)|recall) (?:again|more carefully)|let me (?:try to )?remember)\b",
            r"(?:,|\s)(?:right|correct|isn'?t it|no|yes)\?\s*$",
            r"\b(?:maybe|perhaps) (?:there'?s|this is|it'?s) a trick|\btrick question\b"
            r"|\b(?:wait|but),? (?:but |wait,? )?(?:sometimes|maybe i|that seems too|that might"
            r" not)|\bmaybe i (?:was|am|made|need|should double)|\b(?:let me try to|i need to)"
            r" recall\b|\bmight not (?:add up|be right|work)|\btoo (?:straightforward|easy|"
            r"simple)\b",
            r"不确定|不太确定|也许|是不是|对吗|对不对|吗[？?]\s*$|糊涂",
        ],
        triggers=(
            "sure|certain|confused|am i|right|correct|can't|cant|add up|sense|wrong|mixing|"
            "missing|overcompl|overthink|or was|or is|wonder|mistake|again|carefully|"
            "remember|?|trick|sometimes|maybe i|seems too|might not|recall|too "
        ),
        zh=_ZH_UNSURE,
    ),
    _cue(
        VERIFICATION,
        0.8,
        head=[_LEAD + r"(?:yes|yep|yeah|yup|correct|right|good|great|perfect|exactly|indeed)\b"],
        free=[
            r"\b(?:let me|let'?s|i'?ll|i should|i need to|i want to|just to|to|i must|i have to)"
            r" (?:\w+ )?(?:double[- ]check|check|verify|confirm|make sure|be sure|ensure|recap"
            r"|recount|re-?verify|cross[- ]check|count again)\b",
            r"\b(?:check(?:ing)? (?:it |that |this )?again|once more|to be (?:sure|safe)"
            r"|sanity check|double[- ]check(?:ing)?|verify(?:ing)? (?:each|the|my))\b",
            r"\b(?:that|this|it|which|everything) (?:all )?(?:checks out|seems (?:right|correct|"
            r"okay|consistent|to (?:work|fit|check out))|is (?:correct|right|consistent)"
            r"|'?s (?:correct|right)|works|matches|makes sense|adds up|fits|holds)\b",
            r"\b(?:seems|looks) (?:right|correct|good|okay|consistent)\b",
            r"\b(?:all (?:the )?(?:constraints|conditions|clues) (?:are )?"
            r"(?:satisfied|met|hold))\b",
            r"\bi (?:don'?t|do not) (?:think|see) (?:i made |there (?:is|are) )?any (?:\w+ )?"
            r"(?:mistakes?|errors?)\b",
            r"\bsame (?:result|answer)\b",
            "|".join(_ZH_CHECK),
        ],
        triggers=(
            "check|verif|confirm|sure|recap|recount|count again|once more|safe|seems|"
            "correct|right|consistent|works|matches|sense|adds up|fits|holds|looks|"
            "satisfied|met|hold|mistake|error|same result|same answer"
        ),
        zh=_ZH_CHECK,
    ),
    _cue(
        EXPLORATION,
        0.7,
        head=[
            _LEAD + r"(?:alternatively|another (?:approach|way|thought|angle|idea|possibility|"
            r"interpretation)|what if|what about|suppose|let'?s (?:say|assume|suppose)|assume|"
            r"or maybe|or perhaps|unless|could (?:it|there|the|this|they|he|she)|is (?:there|it "
            r"possible)|maybe (?:the (?:question|problem|user|puzzle)|it'?s (?:a trick|the other)"
            r"|they|there'?s|i should (?:consider|try|think))|perhaps (?:the|it|they|there)|"
            r"let me (?:consider|try|think of) (?:another|a different|other)|i should (?:also )?"
            r"consider|(?:for example|like), maybe)"
        ],
        free=[r"\banother angle\b", "|".join(_ZH_OTHER)],
        triggers="another angle",
        zh=_ZH_OTHER,
    ),
)
_OPENING = _cue(
    INITIALISING,
    0.7,
    head=[
        r"[\W_]*(?:okay|ok|alright|all right|well)[,.!]*\s*"
        r"(?:so|let'?s see|let me see|hmm+)?[,.!]*$"
    ],
    free=[
        r"\b(?:the (?:question|problem|user|puzzle|task|prompt) (?:is|says|asks|wants|states|"
        r"mentions|specified|specifies|gives)|we need to (?:find|figure|determine|work out)"
        r"|the key (?:points?|here) (?:is|are)"
        r"|(?:they|the user) (?:specified|want|wants|said|asked|is asking)|it (?:asks|wants))\b",
        r"题目|问题是|要求",
    ],
    triggers=(
        "question|problem|user|puzzle|task|prompt|we need to|key|specified|want|said|"
        "asked|asking|asks|题目|问题是|要求"
    ),
)
_PLAN = _join(
    r"\b(?:i need to|i should|i'?ll|let me|let'?s|we need to|i have to|i must|first,"
    r"|(?:the|my|our) (?:plan|approach|strategy))\b",
    r"首先|我们需要|我需要|先",
)
_FORWARD = _join(
    _LEAD + r"(?:next|then|now|first|second|third|finally|moving|case \d|so now|after that)\b",
)
_CONNECTIVE = _join(
    r"\b(?:so|therefore|thus|hence|then|because|since|means|gives|equals|is|are)\b|=|[+\-*/×÷]"
)
_INFERENCE = _join(
    r"\b(?:then|therefore|thus|hence|means|must|would|because|since|if|implies)\b|所以|因此|如果"
)
_WORD = re.compile(r"[^\W\d_]{3,}|[\u4e00-\u9fff]")
_STOP = frozenset(
    str.split(
        "the and that this with for are was were has have had not but you your they them their "
        "there then than what which who whom when where how why let its it's i'm i've i'll does "
        "did done doing from into onto about also just very much many more most some any each "
        "other such only own same too can could should would will shall may might must being been "
        "because since like okay wait hmm yes yeah yep right sure think see know make sure check "
        "again need want now so next first second third finally initially starting start also "
        "let's says say given problem question there's here"
    )
)


@dataclass
class StepRoles:
    """The role of each sentence of a trace."""

    spans: np.ndarray  # [n, 2] character offsets of the sentences
    role: np.ndarray  # int8 [n], indices into ROLES
    confidence: np.ndarray  # float [n] in (0, 1]
    abandoned: np.ndarray  # bool [n]: a deduction a later backtrack revised

    def names(self) -> list[str]:
        return [ROLES[r] for r in self.role.tolist()]

    def chars(self, spans: list[tuple[int, int]] | None = None) -> np.ndarray:
        """int64 [len(ROLES)]: characters of each role, inside `spans` when given."""
        lengths = self.spans[:, 1] - self.spans[:, 0]
        if spans is None:
            return np.bincount(self.role, weights=lengths, minlength=len(ROLES)).astype(np.int64)
        if not len(self.spans):
            return np.zeros(len(ROLES), dtype=np.int64)
        origin, end = int(self.spans[0, 0]), int(self.spans[-1, 1])
        kept = np.zeros(end - origin, dtype=bool)
        for a, b in spans:
            kept[max(a - origin, 0) : max(b - origin, 0)] = True
        of_char = np.repeat(self.role, lengths)
        return np.bincount(of_char[kept], minlength=len(ROLES)).astype(np.int64)

    def of_units(self, units: np.ndarray, values: np.ndarray) -> np.ndarray:
        """float [k]: each unit's character-weighted mean of its sentences' `values`."""
        weighted, size = np.zeros(len(units)), np.zeros(len(units))
        starts = units[:, 0]
        for (a, b), value in zip(self.spans.tolist(), values.tolist(), strict=True):
            first = max(int(np.searchsorted(starts, a, side="right")) - 1, 0)
            for u in range(first, len(units)):
                s, e = units[u].tolist()
                if s >= b:
                    break
                overlap = min(b, e) - max(a, s)
                if overlap > 0:
                    weighted[u] += overlap * value
                    size[u] += overlap
        return np.divide(weighted, size, out=np.zeros(len(units)), where=size > 0)

    def unit_roles(self, units: np.ndarray) -> list[str]:
        """The role covering most of each unit's characters."""
        shares = np.stack(
            [self.of_units(units, (self.role == r).astype(float)) for r in range(len(ROLES))]
        )
        return [ROLES[r] for r in shares.argmax(axis=0).tolist()]


def _content_words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower())) - _STOP


def _values(text: str) -> set[str]:
    return {number_value(m) for m in numbers_in(text)}


def _triggered(lowered: str, starts: np.ndarray, cue: _Cue) -> np.ndarray:
    """bool [n]: the sentences (starting at `starts`) holding one of the cue's triggers."""
    hits = []
    for trigger in cue.triggers:
        at = lowered.find(trigger)
        while at >= 0:
            hits.append(at)
            at = lowered.find(trigger, at + 1)
    marks = np.zeros(len(starts), dtype=bool)
    if hits and len(starts):
        owner = np.searchsorted(starts, np.asarray(hits), side="right") - 1
        marks[owner[owner >= 0]] = True  # text before the first sentence belongs to none
    return marks


# Every cue's head in one pattern, in the cues' order: one `match` finds the first head that
# matches; only the cues before it need their free patterns tried.
_HEADS = re.compile(
    "|".join(f"(?P<c{k}>{cue.head.pattern})" for k, cue in enumerate(_CUES) if cue.head)
)


def _cue_role(sentence: str, triggered: list[list[bool]], i: int) -> tuple[int, float] | None:
    """The role a cue at the (lowercased) sentence `i` names, and how sure the cue is; None
    without one."""
    head = _HEADS.match(sentence)
    first = int(head.lastgroup[1:]) if head else len(_CUES)
    for cue, marks in zip(_CUES[:first], triggered, strict=False):
        if marks[i] and cue.free is not None and cue.free.search(sentence):
            return cue.role, cue.confidence
    return (_CUES[first].role, _CUES[first].confidence) if head else None


def _lowered(text: str) -> str:
    """`text` lowercased with its offsets kept (a few letters lower into two characters)."""
    lowered = text.lower()
    if len(lowered) != len(text):
        lowered = "".join(c if len(c.lower()) != 1 else c.lower() for c in text)
    return lowered


@functools.cache
def _native_tagger():
    from cd_fast.native import load_extension

    def spec(cue: _Cue) -> tuple:
        patterns = [p.pattern if p is not None else None for p in (cue.head, cue.free)]
        return (cue.role, cue.confidence, *patterns, list(cue.triggers))

    return load_extension().RoleTagger(
        [spec(cue) for cue in _CUES],
        spec(_OPENING),
        _PLAN.pattern,
        _FORWARD.pattern,
        _CONNECTIVE.pattern,
        _INFERENCE.pattern,
        sorted(_STOP),
    )


def tag_roles_batch(
    texts: list[str],
    sentences: list[np.ndarray],
    questions: list[str],
    answers: list[str | None],
    threads: int = 0,
) -> list[StepRoles]:
    """`tag_roles` for many traces at once (C++, thread pool, GIL released; `threads` 0: every
    CPU this process may use)."""
    spans = [np.ascontiguousarray(s, dtype=np.int64).reshape(-1, 2) for s in sentences]
    answer_at = [
        -1 if not answer or (at := answer_position(text, answer)) is None else at
        for text, answer in zip(texts, answers, strict=True)
    ]
    role, confidence, abandoned = _native_tagger().tag(
        [_lowered(text) for text in texts],
        spans,
        list(questions),
        [question.lower() for question in questions],
        answer_at,
        threads,
    )
    out, at = [], 0
    for s in spans:
        n = len(s)
        out.append(StepRoles(s, role[at : at + n], confidence[at : at + n], abandoned[at : at + n]))
        at += n
    return out


def tag_roles(
    text: str, sentences: np.ndarray, question: str = "", answer: str | None = None
) -> StepRoles:
    """The role of each sentence ([n, 2] character offsets, the segmenter's steps) of `text`;
    `question` and the final `answer` (when known) let restatements and conclusions be told.
    C++ (`tag_roles_py` is the reference it must equal)."""
    return tag_roles_batch([text], [sentences], [question], [answer], threads=1)[0]


def tag_roles_py(
    text: str, sentences: np.ndarray, question: str = "", answer: str | None = None
) -> StepRoles:
    """Pure-Python reference of `tag_roles` (identical output), where the rules are written out."""
    sentences = np.asarray(sentences, dtype=np.int64).reshape(-1, 2)
    n = len(sentences)
    role, confidence = [DEDUCTION] * n, [0.4] * n  # lists: a numpy item costs more in a loop
    abandoned = [False] * n
    question_words, question_values = _content_words(question), _values(question)
    seen_words, seen_values = set(question_words), set(question_values)
    answer_at = answer_position(text, answer) if answer else None
    started = answer_stated = False  # a first result / the answer already came
    region = None  # the role un-cued sentences continue (verification, exploration, ...)
    region_left = 0
    previous_end = 0  # where the previous sentence's text (before its trailing space) ended
    lowered = _lowered(text)
    starts = sentences[:, 0]
    triggered = [_triggered(lowered, starts, cue).tolist() for cue in _CUES]
    opening = _triggered(lowered, starts, _OPENING).tolist()
    for i, (a, b) in enumerate(sentences.tolist()):
        raw = text[a:b]
        sentence = lowered[a:b].strip()
        lead = len(raw) - len(raw.lstrip())
        new_paragraph = "\n\n" in text[previous_end : a + lead]
        previous_end = a + len(raw.rstrip())
        words = set(_WORD.findall(sentence)) - _STOP
        found = [number_value(m) for m in numbers_in(sentence)]
        values = set(found)
        novel = len(words - seen_words) / len(words) if words else 0.0
        new_values = values - seen_values
        # a check goes over what is known: its result (last number) is one reached before, or
        # without numbers, few new words
        rechecks = (found[-1] in seen_values or not new_values) if found else novel < 0.5
        if rechecks and region != VERIFICATION and _FORWARD.match(sentence):
            rechecks = False
        seen_words |= words
        seen_values |= values
        restates = (
            bool(words)
            and len(words - question_words) <= 0.2 * len(words)
            and not new_values
            and "=" not in sentence  # a computation on the question's numbers moves forward
            and not _INFERENCE.search(sentence)
        )
        states_answer = answer_at is not None and a <= answer_at < b
        cue = _cue_role(sentence, triggered, i)
        opens = cue is None and _OPENING.matches(sentence, opening[i])
        if new_paragraph and (
            region == EXPLORATION or (region == VERIFICATION and _FORWARD.match(sentence))
        ):
            region = None  # a check runs on across paragraphs, but "Then ..." starts a new step
        if cue is not None:
            role[i], confidence[i] = cue
            if cue[0] == CONCLUSION and answer_stated and not states_answer:
                confidence[i] = 0.7
            region = cue[0] if cue[0] in (VERIFICATION, EXPLORATION, BACKTRACKING) else None
            region_left = 3 if cue[0] == EXPLORATION else 0
            if cue[0] == BACKTRACKING:
                for j in range(i - 1, max(i - 3, -1), -1):
                    if role[j] != DEDUCTION:
                        break
                    abandoned[j] = True
        elif not started and (restates or opens or _PLAN.search(sentence)):
            role[i], confidence[i] = INITIALISING, 0.7 if opens else 0.55
        elif opens and not new_values:
            role[i], confidence[i] = INITIALISING, 0.6
        elif region == EXPLORATION and region_left > 0 and len(sentence) < 160:
            role[i], confidence[i] = EXPLORATION, 0.5
            region_left -= 1
        elif (region == VERIFICATION or answer_stated) and rechecks:
            role[i], confidence[i] = VERIFICATION, 0.55 if region == VERIFICATION else 0.45
        elif restates:
            role[i], confidence[i] = INITIALISING, 0.5
        else:
            role[i] = DEDUCTION
            confidence[i] = 0.6 if (new_values or _CONNECTIVE.search(sentence)) else 0.4
            region = None
        if states_answer and role[i] in (DEDUCTION, VERIFICATION, INITIALISING):
            role[i], confidence[i] = CONCLUSION, 0.6
        if role[i] not in (INITIALISING, UNCERTAINTY, EXPLORATION, DEDUCTION) or (
            role[i] == DEDUCTION and confidence[i] > 0.4  # a result or an inference, not talk
        ):
            started = True
        if role[i] == CONCLUSION:
            answer_stated = True
    return StepRoles(
        sentences,
        np.asarray(role, dtype=np.int8),
        np.asarray(confidence),
        np.asarray(abandoned, dtype=bool),
    )


def role_shares(before: np.ndarray, kept: np.ndarray | None) -> dict[str, dict[str, float] | None]:
    """Each role's share of the characters before and after compression (`StepRoles.chars`
    counts; `kept` None: unknown, as for a rewrite)."""

    def shares(chars: np.ndarray) -> dict[str, float]:
        total = max(int(chars.sum()), 1)
        return {role: round(n / total, 4) for role, n in zip(ROLES, chars.tolist(), strict=True)}

    return {"before": shares(before), "after": None if kept is None else shares(kept)}


def role_summary(rows: list[dict[str, list[int | None]]]) -> dict[str, dict[str, float | None]]:
    """Dataset level, from each record's {role: [chars before, chars kept]}: each role's share
    before and after, and the fraction of its characters kept (None where unknown)."""
    before = np.zeros(len(ROLES))
    kept = np.zeros(len(ROLES))
    known = bool(rows)
    for row in rows:
        for i, role in enumerate(ROLES):
            b, k = row[role]
            before[i] += b
            if k is None:
                known = False
            else:
                kept[i] += k
    out = {}
    for i, role in enumerate(ROLES):
        out[role] = {
            "before": round(float(before[i] / max(before.sum(), 1)), 4),
            "after": round(float(kept[i] / max(kept.sum(), 1)), 4) if known else None,
            "kept": round(float(kept[i] / max(before[i], 1)), 4) if known else None,
        }
    return out
