"""EVOL Complexity and EVOL Quality: the LLM-made training data of the Deita scorers.

For every seed (instruction, response):

* EVOL Complexity evolves the instruction M times in a chain with In-Depth Evolving prompts
  (add constraints, deepening, concretizing, increase reasoning steps, and complicate-input when
  the seed has an input), then asks the LLM to score the M+1 instructions together.
* EVOL Quality rewrites the response M times in a chain (helpfulness, relevance, depth,
  creativity, details), then asks the LLM to score the M+1 responses to the seed instruction
  together.

Each variant keeps the score the LLM gave it (the original's choice, hkust-nlp/deita issue #19)
and becomes one scorer-training record: the exact Deita scorer prompt and the score digit.

Score scale. The Deita scorers read six digit tokens, so scores live on a fixed 1..6 scale: the
ranking prompts ask for "Score 1-5" with 6 reserved (too complex to answer / cannot be improved),
whatever the number of items. M+1 items must fit that scale, so M is limited to 1..5 (the paper
uses 5); a larger M is refused with an error instead of being squeezed. distilabel's
generalisation ("Score 1-N, N+1 reserved") would produce 7 for six items, outside the scorer.

Failures never become scores: an evolution that fails (LLM error, empty, truncated, unchanged,
or echoing the rewriting prompt) ends that seed's chain, and a ranking that does not give exactly
one integer 1..6 to each item rejects that seed for that kind. Both are counted and written to
``rejects.jsonl`` with the raw text. Every seed ends, per kind, in exactly one of: records written,
chain failed, ranking failed.

Resuming. All requests go through `deita_train.llm.LLMClient` and its on-disk cache, and the
mutation picked for a (seed, step) is a hash of (global seed, seed id, kind, step), never of
completion order. A killed run started again re-sends only what never succeeded and writes
byte-identical files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deita_train.conversations import ConversationError, derive_id, turn_pairs, validate_record
from deita_train.jsonl import iter_jsonl, write_jsonl
from deita_train.llm import Completion, LLMClient, LLMConfig, LLMError
from deita_train.manifest import write_manifest
from deita_train.scorer_prompts import complexity_prompt, quality_prompt


logger = logging.getLogger(__name__)

KINDS = ("complexity", "quality")
SCORE_MIN, SCORE_MAX = 1, 6
MAX_EVOLUTIONS = SCORE_MAX - 1
OUTPUT_FILES = ("complexity_train.jsonl", "complexity_dev.jsonl", "quality_train.jsonl", "quality_dev.jsonl")

# --------------------------------------------------------------------------- prompts
# Wording of the Deita paper's appendix as quoted in the project's seeds (the add-constraints and the
# in-depth prompts are pinned character for character by tests/test_evol.py); the other In-Depth
# Evolving methods are WizardLM's, written with the appendix's `#Given Prompt#`; complicate-input has
# no published wording, so it is ours.

PROMPT_REWRITER_HEAD = "I want you act as a Prompt Rewriter."
GIVEN_PROMPT_MARK = "#Given Prompt#:\n"
REWRITTEN_PROMPT_MARK = "\n#Rewritten Prompt#:"

COMPLEXITY_METHODS: dict[str, str] = {
    "constraints": "Please add one more constraints/requirements into #Given Prompt#",
    "deepening": (
        "If #Given Prompt# contains inquiries about certain issues, "
        "the depth and breadth of the inquiry can be increased."
    ),
    "concretizing": "Please replace general concepts with more specific concepts.",
    "reasoning": (
        "If #Given Prompt# can be solved with just a few simple thinking processes, "
        "you can rewrite it to explicitly request multiple-step reasoning."
    ),
    "complicate_input": (
        "Please make the input data in #Given Prompt# more complex (for example more entries, "
        "nested structure, or edge cases) while keeping the task itself the same."
    ),
}
DEFAULT_COMPLEXITY_MUTATIONS = ("constraints", "deepening", "concretizing", "reasoning")

RESPONSE_REWRITER_HEAD = "I want you to act as a Response Rewriter"
GIVEN_RESPONSE_MARK = "#Given Response#:\n"
REWRITTEN_RESPONSE_MARK = "\n#Rewritten Response#:"

QUALITY_METHODS: dict[str, str] = {
    "helpfulness": "Please make the Response more helpful to the user.",
    "relevance": "Please make the Response more relevant to #Given Prompt#.",
    "depth": "Please make the Response more in-depth",
    "creativity": "Please increase the creativity of the response.",
    "details": "Please increase the detail level of Response.",
}
DEFAULT_QUALITY_MUTATIONS = tuple(QUALITY_METHODS)

COMPLEXITY_RANKING_HEAD = "Ranking the following questions according to the difficulty and complexity."
QUALITY_RANKING_HEAD = "Rank the following pair of instructions and responses according to their quality."
RANKING_FORMAT_TAIL = "[1] Score: 1\n[2] Score: 2\n...\n"
RESPONSE_LIST_MARK = "#Response List#:\n"

_FORBIDDEN = {
    "complexity": ("#given prompt#", "#rewritten prompt#", "given prompt", "rewritten prompt"),
    "quality": ("#given response#", "#rewritten response#", "given response", "rewritten response"),
}
_LEADING_LABEL = re.compile(r"^\s*[*_]*#?\s*rewritten\s+(?:prompt|response)\s*#?[*_]*\s*:?[*_]*\s*", re.IGNORECASE)


def complexity_evolution_prompt(instruction: str, mutation: str) -> str:
    """The In-Depth Evolving prompt that asks for a harder version of `instruction`."""
    return (
        f"{PROMPT_REWRITER_HEAD}\n"
        "Your objective is to rewrite a given prompt into a more complex version to make those famous AI systems "
        "(e.g., ChatGPT and GPT4) a bit harder to handle.\n"
        "But the rewritten prompt must be reasonable and must be understood and responded by humans.\n"
        "Your rewriting cannot omit the non-text parts such as the table and code in #Given Prompt#:. "
        "Also, please do not omit the input in #Given Prompt#.\n"
        "You SHOULD complicate the given prompt using the following method:\n"
        f"{COMPLEXITY_METHODS[mutation]}\n"
        "You should try your best not to make the #Rewritten Prompt# become verbose, "
        "#Rewritten Prompt# can only add 10 to 20 words into #Given Prompt#.\n"
        "‘#Given Prompt#’, ‘#Rewritten Prompt#’, ‘given prompt’ and ‘rewritten prompt’ "
        "are not allowed to appear in #Rewritten Prompt#\n"
        f"{GIVEN_PROMPT_MARK}{instruction}{REWRITTEN_PROMPT_MARK}\n"
    )


def quality_evolution_prompt(instruction: str, response: str, mutation: str) -> str:
    """The response-rewriting prompt that asks for a better version of `response`."""
    return (
        f"{RESPONSE_REWRITER_HEAD}\n"
        "Your goal is to enhance the quality of the response given by an AI assistant to the #Given Prompt# "
        "through rewriting.\n"
        "But the rewritten response must be reasonable and must be understood by humans.\n"
        "Your rewriting cannot omit the non-text parts such as the table and code in #Given Prompt# and "
        "#Given Response#. Also, please do not omit the input in #Given Prompt#.\n"
        "You Should enhance the quality of the response using the following method:\n"
        f"{QUALITY_METHODS[mutation]}\n"
        "You should try your best not to make the #Rewritten Response# become verbose, "
        "#Rewritten Response# can only add 10 to 20 words into #Given Response#.\n"
        "‘#Given Response#’, ‘#Rewritten Response#’, ‘given response’ and ‘rewritten response’ "
        "are not allowed to appear in #Rewritten Response#\n"
        f"#Given Prompt#:\n{instruction}\n"
        f"{GIVEN_RESPONSE_MARK}{response}{REWRITTEN_RESPONSE_MARK}\n"
    )


def _numbered(items: Sequence[str]) -> str:
    return "\n".join(f"[{i}] {item}" for i, item in enumerate(items, start=1))


def complexity_ranking_prompt(instructions: Sequence[str]) -> str:
    """Joint ranking of up to six instructions on the fixed 1..6 scale (6 = too complex to answer)."""
    _check_item_count(len(instructions))
    return (
        f"{COMPLEXITY_RANKING_HEAD} Score 1-{SCORE_MAX - 1}.\n"
        f"You can give a score of {SCORE_MAX} if the question is too complex for you to answer it. "
        "You should respond with the format:\n"
        f"{RANKING_FORMAT_TAIL}"
        f"{_numbered(instructions)}\n"
    )


def quality_ranking_prompt(instruction: str, responses: Sequence[str]) -> str:
    """Joint ranking of up to six responses to one instruction on the fixed 1..6 scale (6 = cannot be improved)."""
    _check_item_count(len(responses))
    return (
        f"{QUALITY_RANKING_HEAD} Your evaluation should consider factors such as helpfulness, relevance, "
        f"accuracy, depth, creativity, and level of detail of the response. Score 1-{SCORE_MAX - 1}.\n"
        f"Score each response from 1 to {SCORE_MAX - 1}, with {SCORE_MAX} reserved for responses that are "
        "already very well written and cannot be improved further. You should respond with the format:\n"
        f"{RANKING_FORMAT_TAIL}"
        f"#Question#: {instruction}\n"
        f"{RESPONSE_LIST_MARK}"
        f"{_numbered(responses)}\n"
    )


def _check_item_count(n: int) -> None:
    if not 2 <= n <= SCORE_MAX:
        raise ValueError(f"a joint ranking needs 2..{SCORE_MAX} items (M+1 with M in 1..{MAX_EVOLUTIONS}), got {n}")


# --------------------------------------------------------------------------- parsing


@dataclass
class RankingParse:
    """One score per item, or an explicit failure with the reason; `raw` is always the LLM's text."""

    scores: list[int] | None
    error: str | None
    raw: str

    @property
    def ok(self) -> bool:
        return self.scores is not None


_SCORE_LINE = re.compile(r"\[\s*(\d+)\s*\][\s*_]*score[\s*_]*[:：=]?[\s*_]*(-?\d+(?:\.\d+)?)", re.IGNORECASE)


def parse_ranking(text: str, n_items: int) -> RankingParse:
    """Read '[i] Score: k' lines: exactly one integer score in 1..6 for each of items 1..n_items.

    Anything else (missing or extra items, conflicting repeats, fractions, out-of-scale values,
    no score lines at all) is a failure with the reason; nothing is guessed or filled in.
    """
    found: dict[int, int] = {}
    matches = list(_SCORE_LINE.finditer(text or ""))
    if not matches:
        return RankingParse(None, "no '[i] Score: k' lines found", text)
    for m in matches:
        index, value = int(m.group(1)), m.group(2)
        if not 1 <= index <= n_items:
            return RankingParse(None, f"score for item [{index}] but there are only {n_items} items", text)
        if not re.fullmatch(r"\d+", value):
            return RankingParse(None, f"item [{index}] has a non-integer score {value!r}", text)
        score = int(value)
        if not SCORE_MIN <= score <= SCORE_MAX:
            return RankingParse(None, f"item [{index}] score {score} is outside {SCORE_MIN}..{SCORE_MAX}", text)
        if index in found and found[index] != score:
            return RankingParse(None, f"item [{index}] scored twice ({found[index]} and {score})", text)
        found[index] = score
    missing = [i for i in range(1, n_items + 1) if i not in found]
    if missing:
        return RankingParse(None, f"no score for item(s) {missing}", text)
    return RankingParse([found[i] for i in range(1, n_items + 1)], None, text)


def clean_evolution(text: str, parent: str, kind: str) -> tuple[str | None, str | None]:
    """Strip an echoed 'Rewritten Prompt:' label; return (text, None) or (None, why it is unusable)."""
    out = _LEADING_LABEL.sub("", text or "", count=1).strip()
    if not out:
        return None, "empty evolution"
    lowered = out.lower()
    for marker in _FORBIDDEN[kind]:
        if marker in lowered:
            return None, f"evolution copies the rewriting prompt (contains {marker!r})"
    if out == parent.strip():
        return None, "evolution is identical to its parent"
    return out, None


# --------------------------------------------------------------------------- seeds


@dataclass(frozen=True)
class Seed:
    """One seed: the user query as the scorer sees it (instruction plus input), and its response."""

    id: str
    instruction: str
    response: str
    has_input: bool = False


def seed_query(instruction: str, input_text: str | None) -> str:
    """Alpaca instruction and input joined the way the conversation pool would show them."""
    input_text = (input_text or "").strip()
    return f"{instruction.strip()}\n\n{input_text}" if input_text else instruction.strip()


def _read_records(path: Path) -> list[Any]:
    if path.suffix == ".jsonl":
        return list(iter_jsonl(path))
    text = path.read_text(encoding="utf-8-sig")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":
            return list(iter_jsonl(path))
        raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from e
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of seed records, got {type(data).__name__}")
    return data


def _alpaca_seed(record: dict, source: str, index: int) -> Seed:
    rid = record.get("id")

    def err(reason: str, fld: str) -> ConversationError:
        return ConversationError(
            reason, source=source, index=index, record_id=None if rid is None else str(rid), field=fld
        )

    for fld in ("instruction", "output"):
        value = record.get(fld)
        if not isinstance(value, str):
            raise err(f"must be a string, got {type(value).__name__}", fld)
        if not value.strip():
            raise err("is empty", fld)
    input_text = record.get("input")
    if input_text is not None and not isinstance(input_text, str):
        raise err(f"must be a string, got {type(input_text).__name__}", "input")
    if rid is not None and (isinstance(rid, bool) or not isinstance(rid, (str, int)) or not str(rid).strip()):
        raise err("must be a non-empty string or integer", "id")
    query = seed_query(record["instruction"], input_text)
    response = record["output"].strip()
    sid = (
        str(rid)
        if rid is not None
        else derive_id([{"from": "human", "value": query}, {"from": "gpt", "value": response}])
    )
    return Seed(id=sid, instruction=query, response=response, has_input=bool((input_text or "").strip()))


def load_seeds(path: str | Path, max_seeds: int | None = None) -> tuple[list[Seed], list[dict], int]:
    """Read Alpaca-style (instruction, input, output) or conversation records into seeds.

    Returns (seeds, rejects, n_read). Conversation records contribute their first human/gpt pair.
    A malformed record raises an error naming the record and the field; a duplicate id or duplicate
    content, or a conversation whose first human turn has no answer, is rejected with the reason.
    `max_seeds` keeps the first N usable seeds (file order) and leaves the rest unread.
    """
    path = Path(path)
    source = str(path)
    seeds: list[Seed] = []
    rejects: list[dict] = []
    ids: set[str] = set()
    by_content: dict[str, str] = {}
    n_read = 0
    for index, record in enumerate(_read_records(path)):
        if max_seeds is not None and len(seeds) >= max_seeds:
            break
        n_read += 1
        if not isinstance(record, dict):
            raise ConversationError(
                f"record must be a JSON object, got {type(record).__name__}", source=source, index=index
            )
        if "conversations" in record or "messages" in record:
            conv, _, _ = validate_record(record, source=source, index=index)
            query, response = turn_pairs(conv)[0]
            seed = Seed(id=conv["id"], instruction=query.strip(), response=response.strip())
            if not seed.response:
                rejects.append(_reject(seed.id, "load", "first human turn has no gpt answer", query))
                continue
        elif "instruction" in record:
            seed = _alpaca_seed(record, source, index)
        else:
            raise ConversationError(
                "neither an Alpaca record (instruction/input/output) nor a conversation (conversations/messages)",
                source=source,
                index=index,
                record_id=str(record["id"]) if "id" in record else None,
                field="instruction",
            )
        content = hashlib.sha256(json.dumps([seed.instruction, seed.response]).encode("utf-8")).hexdigest()
        if content in by_content:
            why = f"duplicate content of seed {by_content[content]} (record {index})"
            rejects.append(_reject(seed.id, "load", why, seed.instruction))
            continue
        if seed.id in ids:
            rejects.append(_reject(seed.id, "load", f"duplicate id (record {index})", seed.instruction))
            continue
        ids.add(seed.id)
        by_content[content] = seed.id
        seeds.append(seed)
    return seeds, rejects, n_read


def _reject(seed_id: str, stage: str, reason: str, raw: str | None) -> dict:
    return {"seed_id": seed_id, "stage": stage, "reason": reason, "raw": raw}


# --------------------------------------------------------------------------- demo seeds

_DEMO_SEEDS: tuple[tuple[str, str, str], ...] = (
    (
        "Explain why bread dough needs to rest before baking.",
        "",
        "Resting lets the gluten relax and gives the yeast time to produce gas, so the loaf rises evenly "
        "and is easier to shape.",
    ),
    (
        "Sort the following numbers from smallest to largest.",
        "42, 7, 19, 3, 88",
        "3, 7, 19, 42, 88",
    ),
    (
        "Write a two-line poem about a lighthouse keeper.",
        "",
        "He counts the ships that never stop,\nand keeps the lamp lit at the top.",
    ),
    (
        "Summarise the paragraph in one sentence.",
        "The town library opened a repair cafe on Saturdays. Volunteers fix lamps, bicycles and clothes "
        "for free, and visitors learn to do small repairs themselves.",
        "On Saturdays the library's volunteer repair cafe fixes household items for free and teaches "
        "visitors to repair things themselves.",
    ),
    (
        "Give three tips for keeping houseplants alive.",
        "",
        "1. Water only when the top of the soil is dry. 2. Put the plant where it gets the light it needs. "
        "3. Use a pot with drainage holes.",
    ),
    (
        "Convert the temperature from Celsius to Fahrenheit.",
        "25 degrees Celsius",
        "25 degrees Celsius is 77 degrees Fahrenheit (25 x 9/5 + 32).",
    ),
    (
        "What is the difference between weather and climate?",
        "",
        "Weather is the state of the atmosphere over hours or days; climate is the average pattern of "
        "weather in a place over many years.",
    ),
    (
        "Find the spelling mistake in the sentence and correct it.",
        "The comittee will meet on Tuesday.",
        "'comittee' should be spelled 'committee'.",
    ),
    (
        "Suggest a name for a cafe that also sells second-hand books.",
        "",
        "Chapter and Cup.",
    ),
    (
        "Describe how a bicycle gear system helps a rider climb hills.",
        "",
        "Lower gears make each pedal turn move the wheel less, so the rider pushes with less force and "
        "can climb steadily at a slower speed.",
    ),
    (
        "Classify each animal as a mammal, bird or reptile.",
        "sparrow, lizard, dolphin",
        "sparrow: bird; lizard: reptile; dolphin: mammal.",
    ),
    (
        "Write a polite email declining a meeting invitation.",
        "",
        "Hello Sam, thank you for the invitation. I am not able to attend on Thursday, but I would be glad "
        "to read the notes afterwards. Best regards, Alex.",
    ),
    (
        "Explain what a prime number is, with an example.",
        "",
        "A prime number is a whole number above 1 whose only divisors are 1 and itself; 7 is prime.",
    ),
    (
        "Turn the list of ingredients into a shopping list grouped by aisle.",
        "apples, milk, rice, yoghurt, carrots, pasta",
        "Produce: apples, carrots. Dairy: milk, yoghurt. Dry goods: rice, pasta.",
    ),
    (
        "Why do leaves change colour in autumn?",
        "",
        "As days shorten, trees stop making green chlorophyll, which uncovers the yellow and orange "
        "pigments already in the leaf.",
    ),
    (
        "Count the vowels in the word.",
        "encyclopedia",
        "The word 'encyclopedia' has 5 vowels: e, o, e, i, a.",
    ),
)
_DEMO_TOPICS = (
    "planning a weekend hike",
    "learning to touch-type",
    "saving energy at home",
    "starting a small vegetable garden",
    "preparing for a job interview",
    "keeping a reading journal",
    "organising a community clean-up",
    "teaching a child to ride a bike",
    "making a simple monthly budget",
    "reducing food waste in the kitchen",
    "practising a new language every day",
    "setting up a home workspace",
)
_DEMO_TASKS = (
    ("Give two practical tips for {t}.", "Start with a small, clear goal for {t}, and check your progress each week."),
    (
        "List the first three steps of {t}.",
        "First decide what you want from {t}, then gather what you need, then begin.",
    ),
    (
        "Explain one common mistake people make when {t}.",
        "A common mistake when {t} is trying to do too much at once.",
    ),
    ("Write one encouraging sentence for someone who is {t}.", "Every small step you take in {t} counts."),
)


def demo_seeds(n: int) -> list[dict]:
    """`n` small Alpaca-style seeds written for this project (no dataset text), some with an input."""
    rows = [{"instruction": i, "input": x, "output": o} for i, x, o in _DEMO_SEEDS]
    for task, answer in _DEMO_TASKS:
        for topic in _DEMO_TOPICS:
            rows.append({"instruction": task.format(t=topic), "input": "", "output": answer.format(t=topic)})
    if not 0 <= n <= len(rows):
        raise ValueError(f"demo_seeds: n must be in 0..{len(rows)}, got {n}")
    return [{"id": f"demo-{i:03d}", **row} for i, row in enumerate(rows[:n])]


# --------------------------------------------------------------------------- config


@dataclass
class EvolConfig:
    """Recipe for one EVOL data build (see recipes/evol/*.yaml)."""

    seeds_path: str = field(
        metadata={"help": "Seeds: JSON/JSONL of Alpaca records or conversations; 'demo:N' writes N demo seeds."},
    )
    output_dir: str = field(default="runs/evol", metadata={"help": "Where the training sets and manifest go."})
    model: str = field(default="gpt-4o-mini", metadata={"help": "Chat model name at the endpoint."})
    base_url: str | None = field(default=None, metadata={"help": "OpenAI-compatible base URL (env OPENAI_BASE_URL)."})
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={"help": "Name of the env var holding the key."})
    max_concurrency: int = field(default=8, metadata={"help": "Requests in flight at once."})
    max_retries: int = field(default=6, metadata={"help": "Retries per request on 429/5xx/timeouts."})
    timeout: float = field(default=60.0, metadata={"help": "Seconds per HTTP attempt."})
    backoff_base: float = field(default=1.0, metadata={"help": "First retry delay scale in seconds."})
    backoff_max: float = field(default=60.0, metadata={"help": "Longest retry delay in seconds."})
    cache_dir: str | None = field(default=None, metadata={"help": "Request cache (default: OUTPUT_DIR/llm_cache)."})
    price_per_1m_prompt_tokens: float = field(default=0.0, metadata={"help": "USD per 1M prompt tokens."})
    price_per_1m_completion_tokens: float = field(default=0.0, metadata={"help": "USD per 1M completion tokens."})
    num_evolutions: int = field(default=5, metadata={"help": f"M evolutions per seed, 1..{MAX_EVOLUTIONS}."})
    complexity_mutations: list[str] = field(
        default_factory=lambda: list(DEFAULT_COMPLEXITY_MUTATIONS),
        metadata={"help": "In-Depth mutations to draw from; repeat a name to weight it."},
    )
    complicate_input: bool = field(
        default=True, metadata={"help": "Add the complicate_input mutation for seeds that have an input."}
    )
    quality_mutations: list[str] = field(
        default_factory=lambda: list(DEFAULT_QUALITY_MUTATIONS),
        metadata={"help": "Response-rewriting mutations to draw from; repeat a name to weight it."},
    )
    seed: int = field(default=42, metadata={"help": "Global seed: mutation choice and the train/dev split."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature for evolutions."})
    ranking_temperature: float = field(default=0.0, metadata={"help": "Sampling temperature for the rankings."})
    max_tokens: int | None = field(default=1024, metadata={"help": "max_tokens per evolution (none: not sent)."})
    ranking_max_tokens: int | None = field(default=256, metadata={"help": "max_tokens per ranking."})
    dev_fraction: float = field(default=0.05, metadata={"help": "Share of seeds (whole lineages) held out as dev."})
    max_seeds: int | None = field(default=None, metadata={"help": "Use only the first N usable seeds."})

    def validate(self) -> None:
        if not 1 <= self.num_evolutions <= MAX_EVOLUTIONS:
            raise ValueError(
                f"num_evolutions (M) must be in 1..{MAX_EVOLUTIONS}, got {self.num_evolutions}: the M+1 variants are "
                f"scored jointly on the scorers' fixed {SCORE_MIN}..{SCORE_MAX} scale, which cannot hold more "
                f"than {SCORE_MAX} items"
            )
        for name, allowed, chosen in (
            ("complexity_mutations", COMPLEXITY_METHODS, self.complexity_mutations),
            ("quality_mutations", QUALITY_METHODS, self.quality_mutations),
        ):
            if not chosen:
                raise ValueError(f"{name} is empty")
            unknown = sorted(set(chosen) - set(allowed))
            if unknown:
                raise ValueError(f"{name}: unknown mutation(s) {unknown}; choose from {sorted(allowed)}")
        if not 0.0 <= self.dev_fraction < 1.0:
            raise ValueError(f"dev_fraction must be in [0, 1), got {self.dev_fraction}")

    def llm_config(self) -> LLMConfig:
        return LLMConfig(
            model=self.model,
            base_url=self.base_url,
            api_key_env=self.api_key_env,
            max_concurrency=self.max_concurrency,
            max_retries=self.max_retries,
            timeout=self.timeout,
            backoff_base=self.backoff_base,
            backoff_max=self.backoff_max,
            cache_dir=self.cache_dir or str(Path(self.output_dir) / "llm_cache"),
            price_per_1m_prompt_tokens=self.price_per_1m_prompt_tokens,
            price_per_1m_completion_tokens=self.price_per_1m_completion_tokens,
        )


# --------------------------------------------------------------------------- pipeline


def choose_mutation(global_seed: int, seed_id: str, kind: str, step: int, pool: Sequence[str]) -> str:
    """The mutation for one evolution step: a hash of (global seed, seed id, kind, step), so reruns agree."""
    digest = hashlib.sha256(f"{global_seed}\x1f{seed_id}\x1f{kind}\x1f{step}".encode()).hexdigest()
    return pool[int(digest, 16) % len(pool)]


def split_seeds(seed_ids: Sequence[str], dev_fraction: float, global_seed: int) -> set[str]:
    """The dev seeds: a seeded shuffle, whole lineages on one side; at least one dev and one train seed."""
    ids = list(seed_ids)
    if dev_fraction <= 0 or len(ids) < 2:
        return set()
    n_dev = min(len(ids) - 1, max(1, round(dev_fraction * len(ids))))
    random.Random(global_seed).shuffle(ids)
    return set(ids[:n_dev])


@dataclass
class _Chain:
    """One seed's evolution lineage for one kind: variant 0 is the seed's own text."""

    seed: Seed
    kind: str
    texts: list[str]
    mutations: list[str] = field(default_factory=list)
    failed: bool = False
    status: str = "chain_failed"
    scores: list[int] | None = None

    def lineage(self, split: str) -> dict:
        return {
            "seed_id": self.seed.id,
            "kind": self.kind,
            "split": split,
            "status": self.status,
            "mutations": self.mutations,
            "texts": self.texts,
            "scores": self.scores,
        }


def _evolution_request(chain: _Chain, mutation: str, cfg: EvolConfig) -> dict:
    parent = chain.texts[-1]
    if chain.kind == "complexity":
        prompt = complexity_evolution_prompt(parent, mutation)
    else:
        prompt = quality_evolution_prompt(chain.seed.instruction, parent, mutation)
    request: dict[str, Any] = {"messages": [{"role": "user", "content": prompt}], "temperature": cfg.temperature}
    if cfg.max_tokens:
        request["max_tokens"] = cfg.max_tokens
    return request


def _ranking_request(chain: _Chain, cfg: EvolConfig) -> dict:
    if chain.kind == "complexity":
        prompt = complexity_ranking_prompt(chain.texts)
    else:
        prompt = quality_ranking_prompt(chain.seed.instruction, chain.texts)
    request: dict[str, Any] = {
        "messages": [{"role": "user", "content": prompt}],
        "temperature": cfg.ranking_temperature,
    }
    if cfg.ranking_max_tokens:
        request["max_tokens"] = cfg.ranking_max_tokens
    return request


def _finish_reason(result: Completion) -> str | None:
    try:
        return result.raw["choices"][0].get("finish_reason")
    except (KeyError, IndexError, AttributeError):
        return None


def _record(chain: _Chain, variant: int, text: str, score: int) -> dict:
    if chain.kind == "complexity":
        prompt = complexity_prompt(text)
    else:
        prompt = quality_prompt(chain.seed.instruction, text)
    return {
        "id": f"{chain.seed.id}-{chain.kind}-{variant}",
        "prompt": prompt,
        "completion": str(score),
        "score": score,
        "kind": chain.kind,
        "seed_id": chain.seed.id,
        "variant": variant,
    }


def _resolve_seeds(cfg: EvolConfig, out: Path) -> Path:
    if cfg.seeds_path.startswith("demo:"):
        n = int(cfg.seeds_path.split(":", 1)[1])
        path = out / "demo_seeds.jsonl"
        write_jsonl(path, demo_seeds(n))
        return path
    path = Path(cfg.seeds_path)
    if not path.exists():
        raise FileNotFoundError(f"seeds_path {path} does not exist")
    return path


def build_evol_sets(config: EvolConfig, client: LLMClient | None = None) -> dict[str, Any]:
    """Seeds -> evolution chains -> joint rankings -> scorer-training JSONL, rejects and manifest.

    Writes into ``config.output_dir``: complexity_{train,dev}.jsonl, quality_{train,dev}.jsonl,
    rejects.jsonl, lineage.jsonl (every chain: mutations, texts, scores, status; the lineage the
    original never released) and manifest.json. Returns the counts written to the manifest.
    """
    cfg = config
    cfg.validate()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    seeds_path = _resolve_seeds(cfg, out)
    seeds, rejects, n_read = load_seeds(seeds_path, cfg.max_seeds)
    if not seeds:
        raise ValueError(f"{seeds_path}: no usable seeds")
    client = client or LLMClient(cfg.llm_config())
    m = cfg.num_evolutions
    logger.info("EVOL: %d seeds (%d rejected on load), M=%d, model %s", len(seeds), len(rejects), m, cfg.model)

    counts: dict[str, Any] = {"seeds_read": n_read, "seeds_rejected_on_load": len(rejects), "seeds": len(seeds)}
    per_kind = {
        kind: dict.fromkeys(
            (
                "evolutions_requested",
                "evolutions_made",
                "evolutions_failed",
                "chains_complete",
                "chains_failed",
                "rankings_requested",
                "rankings_parsed",
                "rankings_failed",
                "records",
            ),
            0,
        )
        for kind in KINDS
    }
    chains = [
        _Chain(seed, kind, [seed.instruction if kind == "complexity" else seed.response])
        for seed in seeds
        for kind in KINDS
    ]

    for step in range(1, m + 1):
        alive = [c for c in chains if not c.failed]
        mutations = []
        for chain in alive:
            if chain.kind == "complexity":
                pool = list(cfg.complexity_mutations)
                if cfg.complicate_input and chain.seed.has_input:
                    pool.append("complicate_input")
            else:
                pool = list(cfg.quality_mutations)
            mutations.append(choose_mutation(cfg.seed, chain.seed.id, chain.kind, step, pool))
        requests = [_evolution_request(c, mut, cfg) for c, mut in zip(alive, mutations)]
        results = client.complete_many(requests, desc=f"evolve {step}/{m}")
        for chain, mutation, result in zip(alive, mutations, results):
            stats = per_kind[chain.kind]
            stats["evolutions_requested"] += 1
            stage = f"evolve_{chain.kind}"
            where = f"step {step} ({mutation})"
            if isinstance(result, LLMError):
                reason, raw, text = f"{where}: LLM request failed: {result.reason}", None, None
            elif _finish_reason(result) == "length":
                reason, raw, text = f"{where}: evolution truncated (finish_reason=length)", result.text, None
            else:
                text, why = clean_evolution(result.text, chain.texts[-1], chain.kind)
                reason, raw = (f"{where}: {why}", result.text) if text is None else (None, None)
            if text is None:
                stats["evolutions_failed"] += 1
                chain.failed = True
                rejects.append(_reject(chain.seed.id, stage, reason, raw))
                continue
            stats["evolutions_made"] += 1
            chain.texts.append(text)
            chain.mutations.append(mutation)

    ranked = [c for c in chains if not c.failed]
    for chain in chains:
        per_kind[chain.kind]["chains_failed" if chain.failed else "chains_complete"] += 1
    results = client.complete_many([_ranking_request(c, cfg) for c in ranked], desc="rank")
    dev_ids = split_seeds([s.id for s in seeds], cfg.dev_fraction, cfg.seed)
    files: dict[str, list[dict]] = {name: [] for name in OUTPUT_FILES}
    for chain, result in zip(ranked, results):
        stats = per_kind[chain.kind]
        stats["rankings_requested"] += 1
        stage = f"rank_{chain.kind}"
        chain.status = "ranking_failed"
        if isinstance(result, LLMError):
            stats["rankings_failed"] += 1
            rejects.append(_reject(chain.seed.id, stage, f"LLM request failed: {result.reason}", None))
            continue
        parsed = parse_ranking(result.text, len(chain.texts))
        if not parsed.ok:
            stats["rankings_failed"] += 1
            rejects.append(_reject(chain.seed.id, stage, f"ranking did not parse: {parsed.error}", parsed.raw))
            continue
        stats["rankings_parsed"] += 1
        chain.status, chain.scores = "ranked", parsed.scores
    # chains are in seed order, then kind; records in variant order: independent of completion order
    for chain in chains:
        if chain.scores is None:
            continue
        side = "dev" if chain.seed.id in dev_ids else "train"
        for variant, (text, score) in enumerate(zip(chain.texts, chain.scores)):
            files[f"{chain.kind}_{side}.jsonl"].append(_record(chain, variant, text, score))
        per_kind[chain.kind]["records"] += len(chain.scores)

    for name, records in files.items():
        write_jsonl(out / name, records)
    write_jsonl(out / "rejects.jsonl", rejects)
    write_jsonl(out / "lineage.jsonl", (c.lineage("dev" if c.seed.id in dev_ids else "train") for c in chains))

    for kind in KINDS:
        s = per_kind[kind]
        assert s["chains_complete"] + s["chains_failed"] == len(seeds)
        assert s["rankings_parsed"] + s["rankings_failed"] == s["chains_complete"]
        assert s["records"] == s["rankings_parsed"] * (m + 1)
        counts[kind] = s
    counts["records"] = {name.removesuffix(".jsonl"): len(records) for name, records in files.items()}
    counts["rejects"] = len(rejects)
    counts["seeds_dev"] = len(dev_ids)
    counts["seeds_train"] = len(seeds) - len(dev_ids)
    counts["llm"] = client.stats
    stages: dict[str, list[str]] = {}
    for r in rejects:
        stages.setdefault(r["stage"], []).append(r["seed_id"])
    write_manifest(
        out / "manifest.json",
        step="data_prep/evol",
        config=dataclasses.asdict(cfg),
        inputs=[seeds_path],
        outputs=[out / name for name in (*OUTPUT_FILES, "rejects.jsonl", "lineage.jsonl")],
        counts=counts,
        extra={
            "score_scale": f"{SCORE_MIN}..{SCORE_MAX} (ranking prompts: 'Score 1-{SCORE_MAX - 1}', {SCORE_MAX} reserved)",
            "rejected_seed_ids": stages,
            "endpoint": {"model": cfg.model, "base_url": client.base_url},
        },
    )
    logger.info(
        "EVOL done: complexity %d/%d seeds ranked, quality %d/%d; %d rejects; %d requests sent, %d cache hits",
        per_kind["complexity"]["rankings_parsed"],
        len(seeds),
        per_kind["quality"]["rankings_parsed"],
        len(seeds),
        len(rejects),
        counts["llm"]["requests_sent"],
        counts["llm"]["cache_hits"],
    )
    return counts


def build_demo_evol_sets(output_dir: str | Path, num_seeds: int = 12, **overrides: Any) -> dict[str, Any]:
    """The demo's EVOL step: start the local stub endpoint, build a tiny EVOL set against it, stop it."""
    from deita_train.testing.openai_stub import StubOpenAIServer, evol_responder

    with StubOpenAIServer(evol_responder) as server:
        cfg = EvolConfig(
            seeds_path=f"demo:{num_seeds}",
            output_dir=str(output_dir),
            model="stub-model",
            base_url=server.base_url,
            max_concurrency=4,
            max_retries=2,
            timeout=10.0,
            backoff_base=0.05,
            dev_fraction=0.2,
            **overrides,
        )
        return build_evol_sets(cfg)
