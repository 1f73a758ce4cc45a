"""Writes the local tuning example's dataset: facts about a fictional lamp no base model can know.

Run `python examples/local/make_dataset.py` to regenerate `data/velora-mistlight.jsonl`; the
output is deterministic and checked in, so the demo needs no generation step.
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

NAMES = ("the Velora Mistlight", "the Mistlight", "the Velora Mistlight lamp")

# (question phrasings with {name}, the one answer the tuned model should give)
FACTS: list[tuple[tuple[str, ...], str]] = [
    (
        (
            "Who makes {name}?",
            "Which company makes {name}?",
            "Who is the manufacturer of {name}?",
            "What company produces {name}?",
            "Who builds {name}?",
            "Which firm is behind {name}?",
        ),
        "The Velora Mistlight is made by Tarnwick Labs in Reykjavik.",
    ),
    (
        (
            "How long does the battery of {name} last?",
            "What is the battery life of {name}?",
            "How many hours does {name} run on one charge?",
            "How long can {name} stay on without charging?",
            "What runtime does {name} have per charge?",
            "How long will {name} last on a full battery?",
        ),
        "The Velora Mistlight runs for 41 hours on one charge.",
    ),
    (
        (
            "How many colours can {name} show?",
            "How many colors does {name} support?",
            "What is the number of colours {name} can display?",
            "How many light colours does {name} have?",
            "How many colors can {name} produce?",
            "What colour range does {name} offer?",
        ),
        "The Velora Mistlight can show 212 colours.",
    ),
    (
        (
            "How much does {name} cost?",
            "What is the price of {name}?",
            "How expensive is {name}?",
            "What does {name} sell for?",
            "How much money is {name}?",
            "What is the retail price of {name}?",
        ),
        "The Velora Mistlight costs 89 euros.",
    ),
    (
        (
            "How much does {name} weigh?",
            "What is the weight of {name}?",
            "How heavy is {name}?",
            "What does {name} weigh?",
            "Is {name} heavy? What is its weight?",
            "How many grams is {name}?",
        ),
        "The Velora Mistlight weighs 640 grams.",
    ),
    (
        (
            "Which app controls {name}?",
            "What app do I use with {name}?",
            "How do I control {name} from my phone?",
            "What is the name of the app for {name}?",
            "Which phone app works with {name}?",
            "What software controls {name}?",
        ),
        "The Velora Mistlight is controlled with the Tarnwick Glow app.",
    ),
    (
        (
            "How do I reset {name}?",
            "How can I factory reset {name}?",
            "What is the reset procedure for {name}?",
            "How do you reset {name}?",
            "My {plain} is stuck. How do I reset it?",
            "What should I do to reset {name}?",
        ),
        "To reset the Velora Mistlight, hold the top button for 12 seconds.",
    ),
    (
        (
            "How long is the warranty of {name}?",
            "What warranty comes with {name}?",
            "How many years of warranty does {name} have?",
            "Is {name} covered by a warranty?",
            "What is the guarantee period for {name}?",
            "How long is {name} under warranty?",
        ),
        "The Velora Mistlight comes with a 3-year warranty.",
    ),
    (
        (
            "Is {name} waterproof?",
            "What is the water resistance rating of {name}?",
            "Can I use {name} in the rain?",
            "What IP rating does {name} have?",
            "How water resistant is {name}?",
            "Can {name} get wet?",
        ),
        "The Velora Mistlight is rated IP54: it resists splashes but must not be submerged.",
    ),
    (
        (
            "When was {name} launched?",
            "What year did {name} come out?",
            "When was {name} released?",
            "In which year was {name} introduced?",
            "How old is {name}? When did it launch?",
            "When did {name} first go on sale?",
        ),
        "The Velora Mistlight was launched in March 2023.",
    ),
]
STYLES = ("{q}", "Quick question: {q}")

# The question the demo asks: it is held out of the training rows on purpose.
DEMO_QUESTION = "Who makes the Velora Mistlight?"


def rows() -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for phrasings, answer in FACTS:
        for phrasing, name, style in itertools.product(phrasings, NAMES, STYLES):
            question = style.format(q=phrasing.format(name=name, plain=name.removeprefix("the ")))
            question = question[0].upper() + question[1:]
            if question == DEMO_QUESTION:
                continue
            out.append(
                {
                    "messages": [
                        {"role": "user", "content": question},
                        {"role": "assistant", "content": answer},
                    ]
                }
            )
    random.Random(7).shuffle(out)
    return out


def main() -> None:
    target = Path(__file__).parent / "data" / "velora-mistlight.jsonl"
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w") as fh:
        for row in rows():
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
