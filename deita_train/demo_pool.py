"""The demo pool: a small, deterministic set of conversations written by this project for `make demo`.

It is varied on purpose so every stage has something to do: single- and multi-turn dialogues,
short and long replies, a system turn, planted near-duplicates (the diversity filter should keep
only one of each), and a few broken records that lenient loading must reject with a reason.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from deita_train.jsonl import write_jsonl


TOPICS = [
    ("photosynthesis", "plants turn light, water and carbon dioxide into sugar and oxygen"),
    ("binary search", "it halves a sorted range each step, so it needs about log2(n) comparisons"),
    ("the water cycle", "water evaporates, condenses into clouds and falls again as rain or snow"),
    ("compound interest", "interest is earned on earlier interest, so growth is exponential over time"),
    ("TCP handshakes", "the client sends SYN, the server answers SYN-ACK, and the client confirms with ACK"),
    ("sourdough bread", "a culture of wild yeast and lactic bacteria leavens the dough and sours it"),
    ("the French Revolution", "it began in 1789 and ended the absolute monarchy in France"),
    ("vaccines", "they train the immune system with a harmless antigen before a real infection"),
    ("hash tables", "keys are hashed into buckets, giving average constant-time lookups"),
    ("plate tectonics", "the lithosphere is split into plates that drift over the mantle"),
    ("haiku", "a three-line poem of five, seven and five syllables"),
    ("gradient descent", "it steps against the gradient of the loss to find a minimum"),
    ("the Pythagorean theorem", "in a right triangle a^2 + b^2 = c^2"),
    ("black holes", "their gravity is so strong that not even light escapes past the event horizon"),
    ("git rebase", "it replays commits on top of another base, rewriting their history"),
    ("supply and demand", "prices rise when demand exceeds supply and fall when supply exceeds demand"),
]
ASKS = [
    "Explain {t} to a beginner.",
    "What should I know about {t}?",
    "Give me a short summary of {t}, with one example.",
    "Why does {t} matter? Answer in two paragraphs.",
    "Write a step-by-step guide that covers {t} in depth, including common mistakes and how to avoid them.",
]
FOLLOW_UPS = [
    "Can you give a concrete example?",
    "How would you explain that to a child?",
    "What is a common misconception about it?",
]


def _reply(rng: random.Random, topic: str, fact: str, long: bool) -> str:
    parts = [f"In short, {fact}.", f"A useful way to think about {topic}: start from the basic idea and build up."]
    if long:
        parts += [
            f"First, {fact}.",
            "Second, look at what changes when the inputs change, and what stays the same.",
            f"Third, practise with a small example of {topic} and check each step by hand.",
            "A common mistake is to memorise the rule without understanding why it holds.",
        ]
    rng.shuffle(parts[1:])
    return " ".join(parts)


def demo_records(n_topics: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """Valid demo conversations (ids `demo-<k>`), including planted near-duplicate pairs."""
    rng = random.Random(seed)
    records: list[dict[str, Any]] = []
    for ti, (topic, fact) in enumerate(TOPICS[:n_topics]):
        for ai, ask in enumerate(ASKS[: 2 + ti % 3]):
            long = ai >= 3 or rng.random() < 0.3
            conv = [
                {"from": "human", "value": ask.format(t=topic)},
                {"from": "gpt", "value": _reply(rng, topic, fact, long)},
            ]
            if rng.random() < 0.35:
                follow = FOLLOW_UPS[(ti + ai) % len(FOLLOW_UPS)]
                conv += [
                    {"from": "human", "value": follow},
                    {"from": "gpt", "value": f"Sure. Think of {topic} this way: {fact}, as a simple case shows."},
                ]
            if ti % 5 == 0 and ai == 0:
                conv.insert(0, {"from": "system", "value": "You are a patient teacher."})
            records.append({"id": f"demo-{len(records):04d}", "conversations": conv, "source": "demo"})
    # near-duplicates: same question and answer with a trivial edit
    for rec in list(records[::7]):
        dup = [dict(t) for t in rec["conversations"]]
        dup[-1]["value"] = dup[-1]["value"] + " "
        dup[-1]["value"] = dup[-1]["value"].rstrip() + "!"
        records.append({"id": f"demo-{len(records):04d}", "conversations": dup, "source": "demo-near-duplicate"})
    return records


BROKEN = [
    {"id": "broken-leading-gpt", "conversations": [{"from": "gpt", "value": "I speak first."}]},
    {
        "id": "broken-two-humans",
        "conversations": [{"from": "human", "value": "Hi"}, {"from": "human", "value": "Hello?"}],
    },
    {"id": "broken-empty", "conversations": []},
    {"id": "broken-role", "conversations": [{"from": "narrator", "value": "Once upon a time"}]},
]


def write_demo_pool(path: str | Path, n_topics: int | None = None, with_broken: bool = True) -> int:
    """Write the demo pool as JSONL (valid records, then a few broken ones). Returns the record count."""
    records = demo_records(n_topics)
    if with_broken:
        records = records + BROKEN
    return write_jsonl(path, records)
