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


# Every count stays one digit: a student this small learns one-digit sums, not carries.
MAX_VALUE = 9


def make_problem(rng: random.Random, index: int) -> Trace:
    """One word problem and its verbose trace. The changes come in a fixed order, each after its
    own verb (finds, gives away, then sometimes buys): the tiny student learns to read the
    amount after each verb, one verb after the other, within its CPU budget, but not which
    change of a free order it is on (README, "the generated world"). About a fifth of the
    trace's tokens are the computation (the start, each change, the answer); the rest is
    restating, planning, double-checks, abandoned ideas and a final check."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    start = rng.randint(2, MAX_VALUE - 1)
    found = rng.randint(1, MAX_VALUE - start)
    given = rng.randint(1, start + found - 1)
    changes = [  # (question clause, trace sentence, operator, amount), one per change
        (f"{name} finds {found} more.", f"{name} finds {found} more", "+", found),
        (f"Then {name} gives away {given}.", f"Then {name} gives away {given}", "-", given),
    ]
    if start + found - given < MAX_VALUE and rng.random() < 0.5:
        bought = rng.randint(1, MAX_VALUE - (start + found - given))
        changes.append(
            (f"Then {name} buys {bought} more.", f"Then {name} buys {bought} more", "+", bought)
        )
    question = (
        f"{name} has {start} {item}. {' '.join(c[0] for c in changes)} How many {item} does "
        f"{name} have now?"
    )
    lines = [
        rng.choice(OPENINGS).format(name=name, item=item),
        rng.choice(PLANS),
        f"{name} starts with {start} {item}.",
    ]
    value = start
    for _, sentence, op, amount in changes:
        result = value + amount if op == "+" else value - amount
        lines.append(f"{sentence}, so {value} {op} {amount} = {result}.")
        lines.append(rng.choice(CHECKS).format(x=value, op=op, y=amount, z=result))
        value = result
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
