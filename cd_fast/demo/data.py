"""An embedded, verifiable dataset: multi-step word problems with verbose teacher-style traces
(restating, step-by-step arithmetic, "Wait, let me double-check...", abandoned paths, a final
check), like the real reasoning traces in ../shared, from a seed and nothing else."""

from __future__ import annotations

import random

from cd_fast.data import Trace

NAMES = ("Ava", "Ben", "Cara", "Dan", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun")
ITEMS = ("apples", "books", "marbles", "coins", "stickers", "cookies", "pencils", "shells")
OPENINGS = (
    "Okay, let me read the problem carefully. The question asks how many {item} {name} has at "
    "the end, so I need to follow each change in order.",
    "Alright, let's see what the question is asking. It wants the number of {item} {name} ends "
    "up with after everything that happens.",
    "Let me think about this step by step. I have to track how many {item} {name} has as the "
    "story goes on.",
)
PLANS = (
    "I'll go through the changes one at a time and keep a running count.",
    "The plan is simple: start from the first amount and apply each change in turn.",
)
CHECKS = (
    "Wait, let me double-check that. {x} {op} {y} is {z}. Yes, that's right.",
    "Hmm, let me make sure: {x} {op} {y} = {z}. Okay, that checks out.",
    "Let me recount to be safe: {x} {op} {y} gives {z}. Good.",
)
DETOURS = (
    "Hmm, maybe I should multiply here instead? No, that doesn't fit the story, so I'll keep "
    "going the way I started.",
    "Wait, could the question be asking for the total given away? No, it asks how many are "
    "left at the end.",
    "Should I count the {item} someone else has too? No, only {name}'s {item} matter here.",
)


def _step(rng: random.Random, value: int, name: str, item: str) -> tuple[str, str, int, str]:
    """(question clause, trace sentence, new value, expression) for one operation."""
    if value > 3 and rng.random() < 0.5:
        amount = rng.randint(1, min(value - 1, 6))
        clause = f"{name} gives away {amount} {item}."
        result, op = value - amount, "-"
        sentence = f"{name} gives away {amount}, so {value} - {amount} = {result}."
    else:
        amount = rng.randint(1, 6)
        clause = f"Then {name} finds {amount} more {item}."
        result, op = value + amount, "+"
        sentence = f"{name} finds {amount} more, so {value} + {amount} = {result}."
    return clause, sentence, result, f"{value} {op} {amount}"


def make_problem(rng: random.Random, index: int) -> Trace:
    """One word problem of two or three changes and its verbose trace: about a quarter of the
    trace's tokens are the computation (the start, each change, the answer), the rest is
    restating, planning, double-checks, abandoned ideas and a final check."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    start = rng.randint(2, 9)
    value = start
    clauses, sentences, expressions = [], [], []
    for _ in range(rng.randint(2, 3)):
        clause, sentence, value, expression = _step(rng, value, name, item)
        clauses.append(clause)
        sentences.append(sentence)
        expressions.append(expression)
    question = (
        f"{name} has {start} {item}. {' '.join(clauses)} How many {item} does {name} have now?"
    )
    lines = [
        rng.choice(OPENINGS).format(name=name, item=item),
        rng.choice(PLANS),
        f"{name} starts with {start} {item}.",
    ]
    for number, (sentence, expression) in enumerate(zip(sentences, expressions, strict=True)):
        lines.append(("First, " if number == 0 else "Next, ") + sentence)
        x, op, y = expression.split()
        z = int(x) + int(y) if op == "+" else int(x) - int(y)
        lines.append(rng.choice(CHECKS).format(x=x, op=op, y=y, z=z))
        if rng.random() < 0.5:
            lines.append(rng.choice(DETOURS).format(name=name, item=item))
    lines.append(f"Let me verify the whole thing once more: it ends at {value}.")
    lines.append(f"So the answer is {value}.")
    return Trace(
        id=f"demo-{index:05d}",
        question=question,
        trace="\n\n".join(lines),
        answer=f"{name} has \\boxed{{{value}}} {item}.",
        gold=str(value),
        meta={"source": "cd_fast demo"},
    )


def make_dataset(count: int, seed: int) -> list[Trace]:
    rng = random.Random(seed)
    return [make_problem(rng, i) for i in range(count)]
