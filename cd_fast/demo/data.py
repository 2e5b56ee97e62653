"""An embedded, verifiable dataset of two domains, from a seed and nothing else, with verbose
teacher-style traces like the real reasoning traces in ../shared (restating, planning, "Wait,
let me double-check...", abandoned paths, a final check):

  math     multi-step word problems (a number, graded by math-verify)
  general  which colour the fruit a person has is, beside another person's eaten fruit (a
           word: the fruit is read from the question, its colour is world knowledge; graded
           as text, `grader` "text")
"""

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
    "Wait, could the question be asking how many changed hands? No, it asks how many are left "
    "at the end.",
    "Should I count the {item} someone else has too? No, only {name}'s {item} matter here.",
)


# Every count stays one digit: a student this small learns one-digit sums, not carries.
MAX_VALUE = 9


def make_problem(rng: random.Random, index: int) -> Trace:
    """One word problem and its verbose trace. The two changes come in a fixed order, each after
    its own verb (finds, then gives away): the tiny student learns to read the amount after each
    verb within its CPU budget on every seed, but not which change of a free order it is on, nor
    reliably a third amount copied across a long trace (README, "the generated world"). About a
    fifth of the trace's tokens are the computation (the start, each change, the answer); the
    rest is restating, planning, double-checks, abandoned ideas and a final check."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    start = rng.randint(2, MAX_VALUE - 1)
    found = rng.randint(1, MAX_VALUE - start)
    given = rng.randint(1, start + found - 1)
    changes = [  # (question clause, trace sentence, operator, amount), one per change
        (f"{name} finds {found} more.", f"{name} finds {found} more", "+", found),
        (f"Then {name} gives away {given}.", f"Then {name} gives away {given}", "-", given),
    ]
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
        lines += [rng.choice(DETOURS).format(name=name, item=item)] * (rng.random() < 0.5)
    lines.append(f"Let me verify the whole thing once more: it ends at {value}.")
    lines.append(f"So the answer is {value}.")
    return Trace(
        id=f"demo-{index:05d}",
        question=question,
        trace="\n\n".join(lines),
        answer=f"{name} has \\boxed{{{value}}} {item}.",
        gold=str(value),
        meta={"source": "cd_fast demo", "domain": "math"},
    )


FRUITS = {
    "banana": "yellow",
    "lemon": "yellow",
    "plum": "purple",
    "grape": "purple",
    "lime": "green",
    "pear": "green",
    "cherry": "red",
    "strawberry": "red",
    "blueberry": "blue",
    "coconut": "brown",
}
FRUIT_OPENINGS = (
    "Okay, the question asks what colour the fruit {name} has is, so first I need to know which "
    "fruit that is.",
    "Alright, let me read this carefully. It wants the colour of the fruit {name} has.",
    "Let me think about this. I have to find {name}'s fruit and then recall its colour.",
)
FRUIT_DETOURS = (
    "Wait, should I use the {other_fruit} {other} ate instead? No, the question is about the "
    "fruit {name} has.",
    "Hmm, could a {fruit} be another colour? An unripe one might be, but a ripe {fruit} is "
    "{colour}.",
    "Does it matter what {other} ate? No, only which fruit {name} has.",
)
# The share of general-domain problems in the generated world.
GENERAL_SHARE = 0.25


def make_fruit_problem(rng: random.Random, index: int) -> Trace:
    """One general-domain question: the colour of the fruit a person has, beside a distractor
    (another person's eaten fruit). The tiny student copies the fruit from the question (the
    word after "has a") and recalls its colour."""
    name, other = rng.sample(NAMES, 2)
    fruit, other_fruit = rng.sample(sorted(FRUITS), 2)
    colour = FRUITS[fruit]
    # "ate one": the fruit asked about is the only word after "has a" in the question
    facts = [f"{name} has a {fruit}.", f"{other} ate one {other_fruit} yesterday."]
    rng.shuffle(facts)
    question = f"{' '.join(facts)} What colour is the fruit {name} has?"
    words = {"name": name, "other": other, "fruit": fruit, "other_fruit": other_fruit}
    words["colour"] = colour
    lines = [
        rng.choice(FRUIT_OPENINGS).format(**words),
        f"{name} has a {fruit}.",
        f"A ripe {fruit} is {colour}.",
    ]
    if rng.random() < 0.7:
        lines.insert(2, rng.choice(FRUIT_DETOURS).format(**words))
    lines.append(f"Let me make sure: {name} has the {fruit}, and it is {colour}.")
    lines.append(f"So the answer is {colour}.")
    return Trace(
        id=f"demo-{index:05d}",
        question=question,
        trace="\n\n".join(lines),
        answer=f"Answer: {colour}",
        gold=colour,
        meta={"source": "cd_fast demo", "domain": "general", "grader": "text"},
    )


def make_dataset(count: int, seed: int, general_share: float = GENERAL_SHARE) -> list[Trace]:
    """`count` problems, a `general_share` of them general-domain, in a seeded random order."""
    rng = random.Random(seed)
    return [
        make_fruit_problem(rng, i) if rng.random() < general_share else make_problem(rng, i)
        for i in range(count)
    ]
