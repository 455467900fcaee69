"""MT-Bench single-answer grading, the FastChat way, without FastChat's failure modes.

What stays exactly as in FastChat's `llm_judge` (so numbers are comparable with the leaderboard):
the question, reference and judge-prompt files, the choice of prompt (`single-v1`, `single-math-v1`
for math/reasoning/coding with the reference answer, and their `-multi-turn` variants for turn 2),
how prompts are filled, the request (system + user message, temperature 0, 2048 tokens), the
`[[rating]]` regex with its `[rating]` fallback, and the `model_answer` / `model_judgment` schemas.

What differs, on purpose:

* any OpenAI-compatible judge by name (no `OPENAI_MODEL_LIST` gate), through the project's
  `LLMClient` (bounded concurrency, counted retries, an on-disk cache keyed by the exact request);
* references come from a reference-answer file, not from a file named after the judge;
* resumable: judgments are keyed by (question_id, model, judge model, prompt name, turn); a rerun
  skips what is done (a changed answer or prompt makes the old judgment stale), and the cache means
  no request is ever paid twice;
* failures are kept: a parse failure keeps the judge's raw text, an API error keeps the error, both
  with score -1 (as FastChat writes them), and both are counted. Aggregation never averages over a
  silently shrunken set: `show` refuses to report scores while failures or missing judgments exist
  unless told to, and then marks every average with how many judgments it covers.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deita_train.evaluation import downloads
from deita_train.evaluation.records import AppendLog, read_log
from deita_train.jsonl import file_sha256, write_json, write_jsonl


logger = logging.getLogger(__name__)

# ------------------------------------------------------------------ FastChat's constants (fastchat/llm_judge/common.py)
# Copied rather than imported: `fastchat.llm_judge.common` imports `anthropic` and the pre-1.0 openai API.

NEED_REF_CATS = ("math", "reasoning", "coding", "arena-hard-200")
TEMPERATURE_CONFIG = {
    "writing": 0.7,
    "roleplay": 0.7,
    "extraction": 0.0,
    "math": 0.0,
    "coding": 0.0,
    "reasoning": 0.0,
    "stem": 0.1,
    "humanities": 0.1,
    "arena-hard-200": 0.0,
}
DEFAULT_TEMPERATURE = 0.7  # gen_model_answer.py: categories not in TEMPERATURE_CONFIG
JUDGE_PARAMS = {
    "temperature": 0,
    "max_tokens": 2048,
}  # chat_completion_openai(model, conv, temperature=0, max_tokens=2048)
ONE_SCORE_PATTERN = re.compile(r"\[\[(\d+\.?\d*)\]\]")
ONE_SCORE_PATTERN_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")
SINGLE_PROMPTS = {
    (False, 1): "single-v1",
    (True, 1): "single-math-v1",
    (False, 2): "single-v1-multi-turn",
    (True, 2): "single-math-v1-multi-turn",
}
CATEGORY_ORDER = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities")

STATUS_OK, STATUS_PARSE_FAILED, STATUS_API_ERROR = "ok", "parse_failed", "api_error"

_DATA = Path(__file__).resolve().parents[1] / "data"
VENDORED_JUDGE_PROMPTS = _DATA / "fastchat_judge" / "judge_prompts.jsonl"
DEMO_QUESTIONS = _DATA / "mt_bench_demo" / "question.jsonl"
DEMO_REFERENCES = _DATA / "mt_bench_demo" / "reference_answer.jsonl"


class MTBenchDataError(ValueError):
    """A question, answer, reference or judge-prompt record that cannot be used: names file, record and field."""


class FailedJudgmentsError(RuntimeError):
    """Scores were asked for while some judgments failed or are missing; carries the summary with the counts."""

    def __init__(self, message: str, summary: dict[str, Any]) -> None:
        super().__init__(message)
        self.summary = summary


# ------------------------------------------------------------------ files


def question_file(path: str | Path | None = None, cache_dir: str | Path | None = None) -> Path:
    """The MT-Bench questions: `path` when given, else FastChat's file (downloaded once, verified, cached)."""
    return downloads.resolve(path, "mt_bench_questions", cache_dir)


def reference_file(path: str | Path | None = None, cache_dir: str | Path | None = None) -> Path:
    """Reference answers: `path` when given, else FastChat's GPT-4 references (downloaded once, cached)."""
    return downloads.resolve(path, "mt_bench_reference_gpt-4", cache_dir)


def judge_prompt_file(path: str | Path | None = None) -> Path:
    """Judge prompts: `path` when given, else FastChat's `judge_prompts.jsonl` vendored in this package."""
    return Path(path) if path else VENDORED_JUDGE_PROMPTS


def _where(path: Path, i: int, rec: Any) -> str:
    rid = rec.get("question_id") if isinstance(rec, dict) else None
    return f"{path}: record {i}" + (f" (question_id {rid})" if rid is not None else "")


def load_questions(
    path: str | Path, first_n: int | None = None, question_ids: Sequence[int] | None = None
) -> list[dict[str, Any]]:
    """Questions in file order, validated (`question_id` int, `category` str, `turns` non-empty list of str)."""
    path = Path(path)
    out, seen = [], set()
    for i, q in enumerate(read_log(path, repair=False)):
        if not isinstance(q.get("question_id"), int):
            raise MTBenchDataError(f"{_where(path, i, q)}: field 'question_id' must be an integer")
        if not isinstance(q.get("category"), str):
            raise MTBenchDataError(f"{_where(path, i, q)}: field 'category' must be a string")
        turns = q.get("turns")
        if not isinstance(turns, list) or not turns or not all(isinstance(t, str) for t in turns):
            raise MTBenchDataError(f"{_where(path, i, q)}: field 'turns' must be a non-empty list of strings")
        if q["question_id"] in seen:
            raise MTBenchDataError(f"{_where(path, i, q)}: duplicate question_id")
        seen.add(q["question_id"])
        out.append(q)
    if question_ids is not None:
        wanted = set(question_ids)
        missing = wanted - seen
        if missing:
            raise MTBenchDataError(f"{path}: no question with id(s) {sorted(missing)}")
        out = [q for q in out if q["question_id"] in wanted]
    return out[:first_n] if first_n is not None else out


def load_judge_prompts(path: str | Path) -> dict[str, dict[str, Any]]:
    """FastChat judge prompts by name (`name`, `type`, `system_prompt`, `prompt_template`, `output_format`)."""
    path = Path(path)
    prompts = {}
    for i, p in enumerate(read_log(path, repair=False)):
        for key in ("name", "type", "system_prompt", "prompt_template", "output_format"):
            if not isinstance(p.get(key), str):
                raise MTBenchDataError(f"{path}: record {i}: field {key!r} must be a string")
        prompts[p["name"]] = p
    return prompts


def _answer_turns(rec: dict[str, Any]) -> list[str]:
    return rec["choices"][0]["turns"]


def load_answers(path: str | Path) -> dict[int, dict[str, Any]]:
    """FastChat `model_answer` records by question_id (the last record wins, as FastChat's loader does)."""
    path = Path(path)
    out = {}
    for i, rec in enumerate(read_log(path, repair=False)):
        if not isinstance(rec.get("question_id"), int):
            raise MTBenchDataError(f"{_where(path, i, rec)}: field 'question_id' must be an integer")
        try:
            turns = _answer_turns(rec)
        except (KeyError, IndexError, TypeError):
            raise MTBenchDataError(f"{_where(path, i, rec)}: field 'choices[0].turns' is missing") from None
        if not isinstance(turns, list) or not all(isinstance(t, str) for t in turns):
            raise MTBenchDataError(f"{_where(path, i, rec)}: field 'choices[0].turns' must be a list of strings")
        out[rec["question_id"]] = rec
    return out


def answer_file(bench_dir: str | Path, model_id: str) -> Path:
    """`{bench_dir}/model_answer/{model_id}.jsonl`, FastChat's layout."""
    return Path(bench_dir) / "model_answer" / f"{safe_name(model_id)}.jsonl"


def judgment_file(bench_dir: str | Path, judge_model: str) -> Path:
    """`{bench_dir}/model_judgment/{judge_model}_single.jsonl`, FastChat's layout."""
    return Path(bench_dir) / "model_judgment" / f"{safe_name(judge_model)}_single.jsonl"


def safe_name(name: str) -> str:
    """A model or judge name usable as a file name ('org/model' -> 'org--model')."""
    return re.sub(r"[^A-Za-z0-9._+-]", "-", name.replace("/", "--"))


# ------------------------------------------------------------------ matches and prompts


@dataclass
class Match:
    """One judgment to make: a model's answer to one question, graded on turn 1 or turn 2."""

    question: dict[str, Any]
    model: str
    answer: dict[str, Any]
    prompt: dict[str, Any]
    ref_answer: dict[str, Any] | None
    turn: int

    @property
    def multi_turn(self) -> bool:
        return self.turn == 2

    def key(self, judge_model: str) -> tuple:
        return (self.question["question_id"], self.model, judge_model, self.prompt["name"], self.turn)


def make_matches(
    questions: Sequence[dict[str, Any]],
    answers: Mapping[str, Mapping[int, dict[str, Any]]],
    judge_prompts: Mapping[str, dict[str, Any]],
    references: Mapping[int, dict[str, Any]] | None = None,
) -> list[Match]:
    """Single-grading matches for every (question, model): turn 1, and turn 2 for two-turn questions.

    Raises before any request is sent when an answer, a needed reference or a prompt is missing.
    """
    references = references or {}
    matches = []
    for q in questions:
        qid, category = q["question_id"], q["category"]
        needs_ref = category in NEED_REF_CATS
        ref = references.get(qid) if needs_ref else None
        if needs_ref and ref is None:
            raise MTBenchDataError(
                f"question {qid} ({category}) is graded against a reference answer, but the reference file has none for it"
            )
        for model, model_answers in answers.items():
            ans = model_answers.get(qid)
            if ans is None:
                raise MTBenchDataError(f"model {model!r} has no answer for question_id {qid}; run `gen` first")
            n_turns = len(_answer_turns(ans))
            turns = (1, 2) if len(q["turns"]) == 2 else (1,)
            for turn in turns:
                if n_turns < turn:
                    raise MTBenchDataError(f"model {model!r}, question_id {qid}: the answer has no turn {turn}")
                name = SINGLE_PROMPTS[(needs_ref, turn)]
                if name not in judge_prompts:
                    raise MTBenchDataError(f"the judge prompt file has no prompt named {name!r}")
                if needs_ref and len(_answer_turns(ref)) < turn:
                    raise MTBenchDataError(f"question {qid}: the reference answer has no turn {turn}")
                matches.append(Match(q, model, ans, judge_prompts[name], ref, turn))
    return matches


def judge_messages(match: Match) -> tuple[list[dict[str, str]], str]:
    """The chat messages FastChat sends for a single-grading match, and the user prompt it records."""
    q, template = match.question, match.prompt
    a_turns = _answer_turns(match.answer)
    kwargs = {}
    if match.ref_answer is not None:
        r_turns = _answer_turns(match.ref_answer)
        kwargs["ref_answer_1"] = r_turns[0]
        if match.multi_turn:
            kwargs["ref_answer_2"] = r_turns[1]
    if match.multi_turn:
        user_prompt = template["prompt_template"].format(
            question_1=q["turns"][0], question_2=q["turns"][1], answer_1=a_turns[0], answer_2=a_turns[1], **kwargs
        )
    else:
        user_prompt = template["prompt_template"].format(question=q["turns"][0], answer=a_turns[0], **kwargs)
    messages = [{"role": "system", "content": template["system_prompt"]}, {"role": "user", "content": user_prompt}]
    return messages, user_prompt


def parse_rating(judgment: str) -> float:
    """FastChat's rating parser: `[[x]]`, else `[x]`, read with `ast.literal_eval`; -1 when neither is found."""
    match = ONE_SCORE_PATTERN.search(judgment) or ONE_SCORE_PATTERN_BACKUP.search(judgment)
    if not match:
        return -1
    return ast.literal_eval(match.groups()[0])


def prompt_sha256(prompt: Mapping[str, Any]) -> str:
    """Fingerprint of a judge prompt record, recorded with every judgment."""
    return hashlib.sha256(json.dumps(dict(prompt), sort_keys=True).encode("utf-8")).hexdigest()


def record_key(rec: Mapping[str, Any]) -> tuple:
    """(question_id, model, judge model, prompt name, turn) of a judgment record."""
    judge_model, prompt_name = rec["judge"]
    return (rec["question_id"], rec["model"], judge_model, prompt_name, rec["turn"])


def _sort_key(rec: Mapping[str, Any]) -> tuple:
    qid, model, judge_model, prompt_name, turn = record_key(rec)
    return (str(model), str(judge_model), qid, turn, str(prompt_name))


# ------------------------------------------------------------------ judging


@dataclass
class JudgingReport:
    """What a judging run did; failures are counted over all judgments of the requested matches."""

    judgment_file: str
    n_matches: int
    n_already_done: int
    n_judged: int
    n_ok: int
    n_parse_failed: int
    n_api_error: int
    n_replaced_stale: int
    llm_stats: dict[str, Any] = field(default_factory=dict)

    @property
    def n_failed(self) -> int:
        return self.n_parse_failed + self.n_api_error


def _judge_one(client: Any, match: Match, judge_model: str, params: Mapping[str, Any]) -> dict[str, Any]:
    from deita_train.llm import LLMError

    messages, user_prompt = judge_messages(match)
    record: dict[str, Any] = {
        "question_id": match.question["question_id"],
        "model": match.model,
        "judge": [judge_model, match.prompt["name"]],
        "user_prompt": user_prompt,
        "judgment": "",
        "score": -1,
        "turn": match.turn,
        "tstamp": time.time(),
        "category": match.question["category"],
        "status": STATUS_OK,
        "error": None,
        "request_key": client.request_key(messages, **params),
        "prompt_sha256": prompt_sha256(match.prompt),
        "answer_id": match.answer.get("answer_id"),
        "judge_params": dict(params),
    }
    try:
        completion = client.complete(messages, **params)
    except LLMError as e:
        record["status"] = STATUS_API_ERROR
        record["error"] = e.reason
        return record
    record["judgment"] = completion.text
    score = parse_rating(completion.text)
    record["score"] = score
    if score == -1:
        record["status"] = STATUS_PARSE_FAILED
        record["error"] = "no [[rating]] or [rating] in the judgment"
    return record


def load_judgments(path: str | Path) -> list[dict[str, Any]]:
    """Judgment records of a (possibly interrupted) judgment file, the last record per key winning."""
    by_key: dict[tuple, dict[str, Any]] = {}
    for rec in read_log(path):
        by_key[record_key(rec)] = rec
    return list(by_key.values())


def _status(rec: Mapping[str, Any]) -> str:
    """Records written by FastChat itself have no status: score -1 there is a failure of unknown kind."""
    if "status" in rec:
        return rec["status"]
    return STATUS_OK if rec.get("score", -1) != -1 else STATUS_PARSE_FAILED


def run_judging(
    matches: Sequence[Match],
    client: Any,
    output_file: str | Path,
    retry_failed: bool = True,
    params: Mapping[str, Any] | None = None,
    desc: str = "judging",
) -> JudgingReport:
    """Judge every match not already judged in `output_file`; append each judgment as it lands.

    A judgment counts as done when its key is in the file with the same request (same answer, prompt
    and judge parameters); API errors are retried when `retry_failed`. On completion the file is
    rewritten atomically, sorted and with one record per key, so an interrupted-then-resumed run
    ends with the same file as an uninterrupted one.
    """
    from tqdm.auto import tqdm

    params = dict(JUDGE_PARAMS if params is None else params)
    judge_model = client.config.model
    output_file = Path(output_file)
    existing = {record_key(r): r for r in load_judgments(output_file)}
    todo, n_done, n_stale = [], 0, 0
    for m in matches:
        rec = existing.get(m.key(judge_model))
        if rec is not None:
            messages, _ = judge_messages(m)
            same_request = rec.get("request_key") in (None, client.request_key(messages, **params))
            if same_request and not (retry_failed and _status(rec) == STATUS_API_ERROR):
                n_done += 1
                continue
            n_stale += 0 if same_request else 1
        todo.append(m)
    logger.info("%d matches: %d already judged, %d to judge (%d stale)", len(matches), n_done, len(todo), n_stale)
    if todo:
        workers = max(1, min(client.config.max_concurrency, len(todo)))
        with (
            AppendLog(output_file) as log,
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix="judge") as pool,
            tqdm(total=len(todo), desc=desc, leave=False) as bar,
        ):
            futures = [pool.submit(_judge_one, client, m, judge_model, params) for m in todo]
            try:
                for fut in as_completed(futures):
                    rec = fut.result()
                    log.append(rec)
                    existing[record_key(rec)] = rec
                    bar.update(1)
            except BaseException:  # Ctrl-C or a bug: stop queueing requests; what finished is already logged
                for f in futures:
                    f.cancel()
                raise
    final = sorted(existing.values(), key=_sort_key)
    write_jsonl(output_file, final)
    wanted = {m.key(judge_model) for m in matches}
    statuses = [_status(existing[k]) for k in wanted]
    return JudgingReport(
        judgment_file=str(output_file),
        n_matches=len(matches),
        n_already_done=n_done,
        n_judged=len(todo),
        n_ok=statuses.count(STATUS_OK),
        n_parse_failed=statuses.count(STATUS_PARSE_FAILED),
        n_api_error=statuses.count(STATUS_API_ERROR),
        n_replaced_stale=n_stale,
        llm_stats=dict(client.stats),
    )


# ------------------------------------------------------------------ aggregation


def _mean(xs: Sequence[float]) -> float | None:
    return math.fsum(xs) / len(xs) if xs else None


def summarize(
    judgments: Iterable[Mapping[str, Any]],
    judge_model: str | None = None,
    models: Sequence[str] | None = None,
    questions: Sequence[Mapping[str, Any]] | None = None,
    question_file: str | Path | None = None,
) -> dict[str, Any]:
    """Per-model turn 1, turn 2, overall and per-category means over valid judgments, with all the counts.

    `overall` is FastChat's "Average": the mean over every valid judgment of both turns. With
    `questions`, the judgments expected per model are known, and missing ones are counted too.
    A model is `complete` when nothing failed and nothing is missing; without `questions` nothing
    can say whether judgments are missing, so it is never `complete`. `question_file` (path, sha256
    and question count) tells a reader whether these are MT-Bench's 80 questions or another set.
    """
    categories = {q["question_id"]: q["category"] for q in questions or ()}
    expected_keys = None
    if questions is not None:
        expected_keys = {(q["question_id"], t) for q in questions for t in ((1, 2) if len(q["turns"]) == 2 else (1,))}
    per_model: dict[str, list[Mapping[str, Any]]] = {}
    for rec in judgments:
        if judge_model is not None and rec["judge"][0] != judge_model:
            continue
        if models is not None and rec["model"] not in models:
            continue
        if expected_keys is not None and (rec["question_id"], rec["turn"]) not in expected_keys:
            continue
        per_model.setdefault(rec["model"], []).append(rec)
    for m in models or ():
        per_model.setdefault(m, [])
    out: dict[str, Any] = {}
    for model, recs in sorted(per_model.items()):
        ok = [r for r in recs if _status(r) == STATUS_OK]
        by_cat: dict[str, list[float]] = {}
        for r in ok:
            cat = r.get("category") or categories.get(r["question_id"], "unknown")
            by_cat.setdefault(cat, []).append(float(r["score"]))
        n_parse = sum(_status(r) == STATUS_PARSE_FAILED for r in recs)
        n_api = sum(_status(r) == STATUS_API_ERROR for r in recs)
        n_missing = None
        if expected_keys is not None:
            n_missing = len(expected_keys - {(r["question_id"], r["turn"]) for r in recs})
        turn_scores = {t: [float(r["score"]) for r in ok if r["turn"] == t] for t in (1, 2)}
        out[model] = {
            "n_judgments": len(recs),
            "n_ok": len(ok),
            "n_parse_failed": n_parse,
            "n_api_error": n_api,
            "n_failed": n_parse + n_api,
            "n_expected": None if expected_keys is None else len(expected_keys),
            "n_missing": n_missing,
            "complete": n_parse + n_api == 0 and n_missing == 0 and len(recs) > 0,
            "turn_1": _mean(turn_scores[1]),
            "turn_2": _mean(turn_scores[2]),
            "overall": _mean([float(r["score"]) for r in ok]),
            "n_ok_turn_1": len(turn_scores[1]),
            "n_ok_turn_2": len(turn_scores[2]),
            "categories": {c: _mean(v) for c, v in _ordered_categories(by_cat)},
        }
    return {
        "judge_model": judge_model,
        "question_file": None if question_file is None else str(question_file),
        "question_file_sha256": None if question_file is None else file_sha256(question_file),
        "n_questions": None if questions is None else len(questions),
        "models": out,
        "complete": all(m["complete"] for m in out.values()) and bool(out),
    }


def _ordered_categories(by_cat: Mapping[str, Any]) -> list[tuple[str, Any]]:
    known = [c for c in CATEGORY_ORDER if c in by_cat]
    return [(c, by_cat[c]) for c in known + sorted(c for c in by_cat if c not in CATEGORY_ORDER)]


def _fmt(x: float | None, flag: str = "") -> str:
    return "-" if x is None else f"{x:.4f}{flag}"


def format_summary(summary: Mapping[str, Any], allow_failures: bool = False) -> str:
    """The `show` table: scores per turn, overall and category, always next to the judgment counts.

    With failed or missing judgments, the scores are withheld unless `allow_failures`; then each
    score is starred and a footnote says it covers only the valid judgments.
    """
    models = summary["models"]
    complete = summary["complete"]
    withhold = not complete and not allow_failures
    flag = "" if complete else "*"
    judge = summary.get("judge_model") or "any judge"
    lines = [f"MT-Bench single-answer grading (judge: {judge})", ""]
    name_w = max([len("model")] + [len(m) for m in models])
    head = f"{'model':<{name_w}}  {'turn 1':>10}  {'turn 2':>10}  {'overall':>10}  {'judged':>7}  {'ok':>5}  {'parse_fail':>10}  {'api_error':>9}  {'missing':>7}"
    lines += [head, "-" * len(head)]
    for model, s in models.items():
        scores = (
            ("withheld",) * 3
            if withhold
            else (_fmt(s["turn_1"], flag), _fmt(s["turn_2"], flag), _fmt(s["overall"], flag))
        )
        missing = "?" if s["n_missing"] is None else str(s["n_missing"])
        lines.append(
            f"{model:<{name_w}}  {scores[0]:>10}  {scores[1]:>10}  {scores[2]:>10}  {s['n_judgments']:>7}  {s['n_ok']:>5}  "
            f"{s['n_parse_failed']:>10}  {s['n_api_error']:>9}  {missing:>7}"
        )
    if not withhold:
        cats = list(dict.fromkeys(c for s in models.values() for c in s["categories"]))
        if cats:
            lines += ["", "per category (mean over both turns):"]
            cat_head = f"{'model':<{name_w}}  " + "  ".join(f"{c[:10]:>10}" for c in cats)
            lines += [cat_head, "-" * len(cat_head)]
            for model, s in models.items():
                lines.append(
                    f"{model:<{name_w}}  " + "  ".join(f"{_fmt(s['categories'].get(c), flag):>10}" for c in cats)
                )
    n_failed = sum(s["n_failed"] for s in models.values())
    n_missing = sum(s["n_missing"] or 0 for s in models.values())
    if not complete:
        lines.append("")
        problem = f"{n_failed} failed judgment(s) and {n_missing} missing"
        if withhold:
            lines.append(
                f"SCORES WITHHELD: {problem}. Averages over the remaining judgments would not be MT-Bench scores. "
                "Rerun `judge` (API errors are retried) or pass --allow_failures true to see partial scores."
            )
        else:
            lines.append(f"* PARTIAL: {problem}; starred scores average only the 'ok' judgments.")
    return "\n".join(lines)


def plot_radar(summary: Mapping[str, Any], path: str | Path, title: str = "MT-Bench") -> Path:
    """A radar chart of per-category scores (one polygon per model), saved as PNG with the Agg backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    models = summary["models"]
    cats = [c for c, _ in _ordered_categories({c: 1 for s in models.values() for c in s["categories"]})]
    if not cats:
        raise ValueError("no valid judgments to plot")
    angles = [2 * math.pi * i / len(cats) for i in range(len(cats))]
    fig = Figure(figsize=(6, 6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(projection="polar")
    for model, s in models.items():
        values = [s["categories"].get(c) or 0.0 for c in cats]
        ax.plot(angles + angles[:1], values + values[:1], label=model, linewidth=1.5)
        ax.fill(angles + angles[:1], values + values[:1], alpha=0.1)
    ax.set_xticks(angles)
    ax.set_xticklabels([c.capitalize() if c != "stem" else "STEM" for c in cats])
    ax.set_ylim(0, 10)
    ax.set_title(title + ("" if summary["complete"] else " (partial: failed or missing judgments)"), pad=24)
    ax.legend(loc="upper right", bbox_to_anchor=(1.3, 1.1), fontsize="small")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path


def show(
    judgment_path: str | Path,
    judge_model: str | None = None,
    models: Sequence[str] | None = None,
    questions: Sequence[Mapping[str, Any]] | None = None,
    allow_failures: bool = False,
    plot_path: str | Path | None = None,
    summary_path: str | Path | None = None,
    question_file: str | Path | None = None,
) -> tuple[str, dict[str, Any]]:
    """Summarize a judgment file: the table text and the summary; raises `FailedJudgmentsError` when incomplete.

    The table (with the counts) and the summary JSON are written either way; the radar plot only
    when the scores are reportable (complete, or `allow_failures`).
    """
    summary = summarize(
        load_judgments(judgment_path),
        judge_model=judge_model,
        models=models,
        questions=questions,
        question_file=question_file,
    )
    text = format_summary(summary, allow_failures=allow_failures)
    if summary_path is not None:
        write_json(summary_path, {**summary, "judgment_file": str(judgment_path), "allow_failures": allow_failures})
    if not summary["models"]:
        raise FailedJudgmentsError(f"{judgment_path}: no judgments for the requested judge/models", summary)
    if not summary["complete"] and not allow_failures:
        raise FailedJudgmentsError(text, summary)
    if plot_path is not None:
        plot_radar(summary, plot_path)
    return text, summary


# ------------------------------------------------------------------ demo


def run_demo_eval(
    model_dir: str | Path,
    out_dir: str | Path,
    base_url: str | None = None,
    n_questions: int = 4,
    max_new_tokens: int = 32,
    judge_model: str = "stub-judge",
    model_id: str = "tiny-chat",
) -> dict[str, Any]:
    """Generate, judge and summarize the project's own demo questions; starts a local stub judge when no URL is given.

    Returns the printed table, the summary, the judging report and the output paths.
    """
    import contextlib

    from deita_train.evaluation.generation import HFChatGenerator, generate_mt_bench_answers
    from deita_train.llm import LLMClient, LLMConfig

    out_dir = Path(out_dir)
    questions = load_questions(DEMO_QUESTIONS, first_n=n_questions)
    answers_path = answer_file(out_dir, model_id)
    generator = HFChatGenerator(model_dir)
    generate_mt_bench_answers(generator, questions, answers_path, model_id, max_new_tokens=max_new_tokens)
    matches = make_matches(
        questions,
        {model_id: load_answers(answers_path)},
        load_judge_prompts(VENDORED_JUDGE_PROMPTS),
        load_answers(DEMO_REFERENCES),
    )
    with contextlib.ExitStack() as stack:
        if base_url is None:
            from deita_train.testing.judge_stub import judge_responder
            from deita_train.testing.openai_stub import StubOpenAIServer

            base_url = stack.enter_context(StubOpenAIServer(judge_responder)).base_url
        client = LLMClient(
            LLMConfig(model=judge_model, base_url=base_url, max_concurrency=4, cache_dir=str(out_dir / "judge_cache"))
        )
        judgments_path = judgment_file(out_dir, judge_model)
        report = run_judging(matches, client, judgments_path)
    summary = summarize(
        load_judgments(judgments_path),
        judge_model=judge_model,
        models=[model_id],
        questions=questions,
        question_file=DEMO_QUESTIONS,
    )
    table = format_summary(summary, allow_failures=True)
    plot = plot_radar(summary, out_dir / "mt_bench_radar.png", title="MT-Bench demo (tiny model, stub judge)")
    return {
        "table": table,
        "summary": summary,
        "report": report,
        "answer_file": answers_path,
        "judgment_file": judgments_path,
        "radar_plot": plot,
    }
