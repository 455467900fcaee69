"""MT-Bench judging: FastChat parity (prompts, messages, parsing), resume without repeats, failures counted."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from deita_train.evaluation import downloads
from deita_train.evaluation import mt_bench as mb
from deita_train.evaluation.records import read_log
from deita_train.llm import LLMClient, LLMConfig
from deita_train.testing.judge_stub import judge_responder, mt_bench_rating
from deita_train.testing.openai_stub import Fault, StubOpenAIServer


REPO = Path(__file__).resolve().parents[1]
JUDGE = "stub-judge"


def _shared_mt_bench() -> Path | None:
    from conftest import shared_data_dir

    d = shared_data_dir() / "mt_bench"
    return d if (d / "question.jsonl").is_file() else None


@pytest.fixture(scope="module")
def bench_files() -> dict[str, Path]:
    """The real FastChat files from ../shared/data when present, else the project's own fixture."""
    d = _shared_mt_bench()
    if d is not None:
        return {"questions": d / "question.jsonl", "references": d / "reference_answer" / "gpt-4.jsonl"}
    return {"questions": mb.DEMO_QUESTIONS, "references": mb.DEMO_REFERENCES}


def _answers(questions, model="model-a", words=lambda qid, turn: 3 + (qid * 7 + turn * 5) % 70):
    """Synthetic answers whose stub scores vary with question and turn."""
    return {
        q["question_id"]: {
            "question_id": q["question_id"],
            "answer_id": f"{model}-{q['question_id']}",
            "model_id": model,
            "choices": [{"index": 0, "turns": [" ".join(["word"] * words(q["question_id"], t)) for t in (1, 2)]}],
            "tstamp": 0.0,
        }
        for q in questions
    }


def _client(server: StubOpenAIServer, cache: Path, **kw) -> LLMClient:
    cfg = dict(model=JUDGE, base_url=server.base_url, cache_dir=str(cache), max_concurrency=4, backoff_base=0.01)
    cfg.update(kw)
    return LLMClient(LLMConfig(**cfg))


def _matches(bench_files, answers_by_model, first_n=None):
    questions = mb.load_questions(bench_files["questions"], first_n=first_n)
    return questions, mb.make_matches(
        questions,
        answers_by_model,
        mb.load_judge_prompts(mb.VENDORED_JUDGE_PROMPTS),
        mb.load_answers(bench_files["references"]),
    )


def _normalized(path: Path) -> list[dict]:
    return sorted(
        ({k: v for k, v in r.items() if k != "tstamp"} for r in read_log(path, repair=False)),
        key=lambda r: json.dumps(r, sort_keys=True),
    )


# ------------------------------------------------------------------ parsing and FastChat parity


@pytest.mark.parametrize(
    "text, rating",
    [
        ("Rating: [[7]]", 7),
        ("The answer is fine. [[7.5]]", 7.5),
        ("I would give it [7] overall.", 7),
        ("Rating: [[10]]", 10),
        ("Rating: [[3]] although a [[8]] was tempting", 3),
        ("no rating here", -1),
        ("Rating: [[seven]]", -1),
        ("", -1),
    ],
)
def test_parse_rating_follows_fastchat(text, rating):
    assert mb.parse_rating(text) == rating


@pytest.fixture(scope="module")
def fastchat_common():
    """FastChat's own llm_judge/common.py; it imports `anthropic` at the top, which judging never uses."""
    sys.modules.setdefault("anthropic", types.ModuleType("anthropic"))
    import fastchat.llm_judge.common as common

    return common


def test_constants_match_fastchat(fastchat_common):
    assert mb.TEMPERATURE_CONFIG == fastchat_common.temperature_config
    assert list(mb.NEED_REF_CATS) == fastchat_common.NEED_REF_CATS
    assert mb.ONE_SCORE_PATTERN.pattern == fastchat_common.one_score_pattern.pattern
    assert mb.ONE_SCORE_PATTERN_BACKUP.pattern == fastchat_common.one_score_pattern_backup.pattern


def test_judge_messages_and_rating_match_fastchat(fastchat_common, bench_files, monkeypatch):
    """For every prompt kind, the messages sent and the rating parsed are FastChat's own."""
    questions = mb.load_questions(bench_files["questions"])
    answers = _answers(questions)
    prompts = mb.load_judge_prompts(mb.VENDORED_JUDGE_PROMPTS)
    matches = mb.make_matches(questions, {"model-a": answers}, prompts, mb.load_answers(bench_files["references"]))
    seen_prompts = set()
    captured = {}

    def fake_completion(model, conv, temperature, max_tokens, api_dict=None):
        captured.update(
            model=model, messages=conv.to_openai_api_messages(), temperature=temperature, max_tokens=max_tokens
        )
        return "Explanation. Rating: [[6]]"

    monkeypatch.setattr(fastchat_common, "chat_completion_openai", fake_completion)
    for m in matches:
        if m.prompt["name"] in seen_prompts:
            continue
        seen_prompts.add(m.prompt["name"])
        judge = fastchat_common.Judge("gpt-4", m.prompt, ref_based=m.ref_answer is not None, multi_turn=m.multi_turn)
        rating, user_prompt, judgment = fastchat_common.run_judge_single(
            m.question, m.answer, judge, m.ref_answer, multi_turn=m.multi_turn
        )
        messages, ours = mb.judge_messages(m)
        assert ours == user_prompt
        assert messages == captured["messages"]
        assert {"temperature": captured["temperature"], "max_tokens": captured["max_tokens"]} == mb.JUDGE_PARAMS
        assert mb.parse_rating(judgment) == rating == 6
    assert seen_prompts == {"single-v1", "single-math-v1", "single-v1-multi-turn", "single-math-v1-multi-turn"}


# ------------------------------------------------------------------ files


def test_vendored_judge_prompts_are_fastchats(bench_files):
    prompts = mb.load_judge_prompts(mb.VENDORED_JUDGE_PROMPTS)
    assert {"single-v1", "single-math-v1", "single-v1-multi-turn", "single-math-v1-multi-turn"} <= set(prompts)
    assert all(p["output_format"] == "[[rating]]" for n, p in prompts.items() if n.startswith("single"))
    shared = _shared_mt_bench()
    if shared is not None:
        assert mb.VENDORED_JUDGE_PROMPTS.read_bytes() == (shared / "judge_prompts.jsonl").read_bytes()


def test_demo_fixture_is_complete():
    questions = mb.load_questions(mb.DEMO_QUESTIONS)
    refs = mb.load_answers(mb.DEMO_REFERENCES)
    assert {q["category"] for q in questions} == set(mb.CATEGORY_ORDER)
    assert all(len(q["turns"]) == 2 for q in questions)
    assert {q["question_id"] for q in questions if q["category"] in mb.NEED_REF_CATS} == set(refs)


def test_bad_question_names_record_and_field(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"question_id": 7, "category": "math", "turns": "not a list"}) + "\n")
    with pytest.raises(mb.MTBenchDataError, match=r"record 0 \(question_id 7\).*'turns'"):
        mb.load_questions(path)


def test_missing_reference_or_answer_fails_before_any_request(bench_files):
    questions = mb.load_questions(bench_files["questions"])
    prompts = mb.load_judge_prompts(mb.VENDORED_JUDGE_PROMPTS)
    answers = _answers(questions)
    with pytest.raises(mb.MTBenchDataError, match="reference"):
        mb.make_matches(questions, {"model-a": answers}, prompts, references={})
    some_qid = questions[0]["question_id"]
    del answers[some_qid]
    with pytest.raises(mb.MTBenchDataError, match=f"no answer for question_id {some_qid}"):
        mb.make_matches(questions, {"model-a": answers}, prompts, mb.load_answers(bench_files["references"]))


def test_download_offline_without_cache_says_how_to_pass_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(downloads.DataUnavailableError, match="--question_file"):
        mb.question_file(None, cache_dir=tmp_path)


def test_cached_download_is_verified(tmp_path, monkeypatch, bench_files):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if _shared_mt_bench() is None:
        pytest.skip("needs the real question file")
    target = tmp_path / downloads.REMOTE_FILES["mt_bench_questions"].name
    target.parent.mkdir(parents=True)
    target.write_bytes(bench_files["questions"].read_bytes())
    assert mb.question_file(None, cache_dir=tmp_path) == target
    target.write_text(target.read_text().replace("Hawaii", "Hawai"))  # a tampered copy is not trusted
    with pytest.raises(downloads.DataUnavailableError):
        mb.question_file(None, cache_dir=tmp_path)


def test_download_verifies_and_caches(tmp_path, monkeypatch):
    """The download path itself, from a file:// URL (no network in tests): verified, cached, reused."""
    import hashlib

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("DEITA_TRAIN_OFFLINE", raising=False)
    digest = hashlib.sha256(mb.DEMO_QUESTIONS.read_bytes()).hexdigest()
    good = downloads.RemoteFile(
        "demo/question.jsonl", mb.DEMO_QUESTIONS.as_uri(), digest, "question_file", "Apache-2.0"
    )
    monkeypatch.setitem(downloads.REMOTE_FILES, "mt_bench_questions", good)
    path = mb.question_file(None, cache_dir=tmp_path)
    assert path == tmp_path / "demo" / "question.jsonl" and path.read_bytes() == mb.DEMO_QUESTIONS.read_bytes()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert mb.question_file(None, cache_dir=tmp_path) == path  # offline, served from the cache
    monkeypatch.delenv("HF_HUB_OFFLINE")
    bad = downloads.RemoteFile("demo/other.jsonl", mb.DEMO_QUESTIONS.as_uri(), "0" * 64, "question_file", "Apache-2.0")
    monkeypatch.setitem(downloads.REMOTE_FILES, "mt_bench_questions", bad)
    with pytest.raises(downloads.DataUnavailableError, match="upstream changed the file"):
        mb.question_file(None, cache_dir=tmp_path)
    assert not (tmp_path / "demo" / "other.jsonl").exists()
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == ["question.jsonl"]  # no partial download left


def test_read_log_cuts_a_torn_last_line_but_not_a_corrupt_middle(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": 3, "b"')
    assert read_log(path) == [{"a": 1}, {"a": 2}]
    assert path.read_text() == '{"a": 1}\n{"a": 2}\n'
    path.write_text('{"a": 1}\n{"a": \n{"a": 3}\n')
    with pytest.raises(ValueError, match=":2: not valid JSON"):
        read_log(path)


# ------------------------------------------------------------------ judging against the stub judge


def test_judging_end_to_end_then_rerun_sends_nothing(tmp_path, bench_files):
    questions = mb.load_questions(bench_files["questions"])
    answers = _answers(questions)
    _, matches = _matches(bench_files, {"model-a": answers})
    out = mb.judgment_file(tmp_path, JUDGE)
    with StubOpenAIServer(judge_responder) as server:
        report = mb.run_judging(matches, _client(server, tmp_path / "cache"), out)
        assert report.n_judged == report.n_ok == len(matches) == 2 * len(questions)
        assert report.n_failed == 0
        assert server.request_count == len(matches)
        first = out.read_bytes()
        again = mb.run_judging(matches, _client(server, tmp_path / "cache"), out)
        assert (again.n_already_done, again.n_judged) == (len(matches), 0)
        assert server.request_count == len(matches)
        assert out.read_bytes() == first

    records = read_log(out)
    assert len({mb.record_key(r) for r in records}) == len(records) == len(matches)
    for r in records:
        assert set(r) >= {"question_id", "model", "judge", "user_prompt", "judgment", "score", "turn", "tstamp"}
        assert r["judge"][0] == JUDGE and r["status"] == "ok"
        assert r["score"] == mt_bench_rating(answers[r["question_id"]]["choices"][0]["turns"][r["turn"] - 1])

    text, summary = mb.show(out, judge_model=JUDGE, questions=questions, plot_path=tmp_path / "radar.png")
    s = summary["models"]["model-a"]
    expected = {t: [r["score"] for r in records if r["turn"] == t] for t in (1, 2)}
    assert s["turn_1"] == pytest.approx(sum(expected[1]) / len(expected[1]))
    assert s["turn_2"] == pytest.approx(sum(expected[2]) / len(expected[2]))
    assert s["overall"] == pytest.approx(sum(expected[1] + expected[2]) / len(records))
    assert (s["n_judgments"], s["n_failed"], s["n_missing"]) == (len(records), 0, 0)
    assert f"{s['overall']:.4f}" in text and "SCORES WITHHELD" not in text
    png = (tmp_path / "radar.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_failures_are_kept_counted_and_block_the_table(tmp_path, bench_files):
    questions, matches = _matches(bench_files, {"model-a": _answers(mb.load_questions(bench_files["questions"]))})
    qids = [q["question_id"] for q in questions]
    garbage_qid, error_qid = qids[0], qids[1]

    def about(qid, turn):
        return lambda body: "[[rating]]" in json.dumps(body) and _is_match(body, qid, turn, questions)

    faults = [
        Fault("garbage_text", match=about(garbage_qid, 1), times=None, text="I refuse to grade this."),
        Fault("500", match=about(error_qid, 2), times=None),
        Fault("429", nth=3, times=1, retry_after=0.01),  # a transient one: retried, not a failure
    ]
    out = mb.judgment_file(tmp_path, JUDGE)
    with StubOpenAIServer(judge_responder, faults=faults) as server:
        report = mb.run_judging(matches, _client(server, tmp_path / "cache", max_retries=2), out)
    assert (report.n_parse_failed, report.n_api_error, report.n_ok) == (1, 1, len(matches) - 2)
    by_key = {(r["question_id"], r["turn"]): r for r in read_log(out)}
    assert len(by_key) == len(matches)
    garbage = by_key[(garbage_qid, 1)]
    assert (garbage["status"], garbage["score"], garbage["judgment"]) == (
        "parse_failed",
        -1,
        "I refuse to grade this.",
    )
    error = by_key[(error_qid, 2)]
    assert (error["status"], error["score"]) == ("api_error", -1) and "500" in error["error"]

    with pytest.raises(mb.FailedJudgmentsError) as exc:
        mb.show(out, judge_model=JUDGE, questions=questions)
    assert "SCORES WITHHELD" in str(exc.value) and "2 failed judgment(s)" in str(exc.value)
    s = exc.value.summary["models"]["model-a"]
    assert (s["n_parse_failed"], s["n_api_error"], s["n_ok"]) == (1, 1, len(matches) - 2)

    text, summary = mb.show(out, judge_model=JUDGE, questions=questions, allow_failures=True)
    ok = [r for r in read_log(out) if r["status"] == "ok"]
    assert summary["models"]["model-a"]["overall"] == pytest.approx(sum(r["score"] for r in ok) / len(ok))
    assert "PARTIAL" in text and "*" in text

    # Rerun against a healthy judge: the API error is retried (one request); the parse failure
    # is a cached answer, so it stays as it was and costs nothing.
    with StubOpenAIServer(judge_responder) as server:
        report = mb.run_judging(matches, _client(server, tmp_path / "cache"), out)
        assert server.request_count == 1
    assert (report.n_parse_failed, report.n_api_error) == (1, 0)


def _is_match(body, qid, turn, questions):
    q = next(q for q in questions if q["question_id"] == qid)
    user = body["messages"][-1]["content"]
    if turn == 1:
        return "[The Start of Assistant's Answer]" in user and f"[Question]\n{q['turns'][0]}\n" in user
    return "### Assistant A:" in user and q["turns"][1] in user


def test_a_changed_answer_makes_its_judgments_stale(tmp_path, bench_files):
    questions = mb.load_questions(bench_files["questions"], first_n=4)
    answers = _answers(questions)
    prompts = mb.load_judge_prompts(mb.VENDORED_JUDGE_PROMPTS)
    refs = mb.load_answers(bench_files["references"])
    out = mb.judgment_file(tmp_path, JUDGE)
    with StubOpenAIServer(judge_responder) as server:
        mb.run_judging(mb.make_matches(questions, {"m": answers}, prompts, refs), _client(server, tmp_path / "c"), out)
        qid = questions[2]["question_id"]
        answers[qid]["choices"][0]["turns"][1] = "a different second answer " * 9
        report = mb.run_judging(
            mb.make_matches(questions, {"m": answers}, prompts, refs), _client(server, tmp_path / "c"), out
        )
        assert (report.n_replaced_stale, report.n_judged) == (1, 1)
        assert server.request_count == 2 * len(questions) + 1
    records = read_log(out)
    assert len(records) == 2 * len(questions)
    changed = next(r for r in records if (r["question_id"], r["turn"]) == (qid, 2))
    assert changed["score"] == mt_bench_rating(answers[qid]["choices"][0]["turns"][1])


def test_summary_counts_missing_and_legacy_records():
    questions = [{"question_id": i, "category": "writing", "turns": ["a", "b"]} for i in (1, 2)]
    judged = [
        {"question_id": 1, "model": "m", "judge": ["j", "single-v1"], "score": 8, "turn": 1},
        {"question_id": 1, "model": "m", "judge": ["j", "single-v1-multi-turn"], "score": 6, "turn": 2},
        {"question_id": 2, "model": "m", "judge": ["j", "single-v1"], "score": -1, "turn": 1},  # FastChat's failure
        {"question_id": 2, "model": "m", "judge": ["other", "single-v1"], "score": 9, "turn": 1},
    ]
    s = mb.summarize(judged, judge_model="j", questions=questions)
    m = s["models"]["m"]
    assert (m["n_judgments"], m["n_ok"], m["n_parse_failed"], m["n_missing"]) == (3, 2, 1, 1)
    assert (m["turn_1"], m["turn_2"], m["overall"]) == (8.0, 6.0, 7.0)
    assert m["categories"] == {"writing": 7.0} and s["complete"] is False


# ------------------------------------------------------------------ kill and resume (a real process)


def _load_script(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_killed_judging_resumes_to_the_same_file_without_repeats(tmp_path, bench_files):
    n_questions, kill_after = 5, 4
    questions = mb.load_questions(bench_files["questions"], first_n=n_questions)
    answers = _answers(questions, model="model-a")
    common = [
        "--question_file", str(bench_files["questions"]),
        "--reference_file", str(bench_files["references"]),
        "--first_n", str(n_questions),
        "--model_id", "model-a",
        "--judge_model", JUDGE,
        "--judge_max_concurrency", "1",
        "--judge_timeout", "60",
    ]  # fmt: skip
    for d in ("killed", "clean"):
        path = mb.answer_file(tmp_path / d, "model-a")
        path.parent.mkdir(parents=True)
        path.write_text("".join(json.dumps(answers[q["question_id"]]) + "\n" for q in questions))

    # Run 1: the judge holds request number `kill_after` until the server stops; kill the process then.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    killed_file = mb.judgment_file(tmp_path / "killed", JUDGE)
    hold = Fault("timeout", nth=kill_after, times=1, sleep=120)
    with StubOpenAIServer(judge_responder, faults=[hold]) as first:
        proc = subprocess.Popen(
            [sys.executable, str(REPO / "eval" / "mt_bench.py"), "judge", "--bench_dir", str(tmp_path / "killed"), "--judge_base_url", first.base_url, *common],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while not (
            first.request_count > kill_after
            and killed_file.exists()
            and len(read_log(killed_file, repair=False)) >= kill_after
        ):
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the judging run never reached the held request"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
        answered_first = [json.dumps(b, sort_keys=True) for b in first.answered]
    assert len(read_log(killed_file)) == kill_after
    assert len(answered_first) == kill_after

    # Run 2: the same command, to completion.
    with StubOpenAIServer(judge_responder) as second:
        script = _load_script("eval_mt_bench_script", REPO / "eval" / "mt_bench.py")
        assert (
            script.main(
                ["judge", "--bench_dir", str(tmp_path / "killed"), "--judge_base_url", second.base_url, *common]
            )
            == 0
        )
        sent_second = [json.dumps(b, sort_keys=True) for b in second.requests]
    assert len(sent_second) == len(set(sent_second)) == 2 * n_questions - kill_after
    assert not set(sent_second) & set(answered_first), "a request answered before the kill was sent again"

    # An uninterrupted run for comparison.
    with StubOpenAIServer(judge_responder) as clean:
        assert (
            script.main(["judge", "--bench_dir", str(tmp_path / "clean"), "--judge_base_url", clean.base_url, *common])
            == 0
        )
    resumed = _normalized(killed_file)
    assert resumed == _normalized(mb.judgment_file(tmp_path / "clean", JUDGE))
    assert len({mb.record_key(r) for r in resumed}) == len(resumed) == 2 * n_questions
    manifest = json.loads(killed_file.with_suffix(".manifest.json").read_text())
    assert manifest["counts"]["n_already_done"] == kill_after and manifest["counts"]["n_failed"] == 0


def test_show_cli_exits_2_while_judgments_fail(tmp_path, bench_files, capsys):
    questions = mb.load_questions(bench_files["questions"], first_n=3)
    answers = _answers(questions)
    path = mb.answer_file(tmp_path, "model-a")
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(answers[q["question_id"]]) + "\n" for q in questions))
    args = [
        "--bench_dir", str(tmp_path), "--question_file", str(bench_files["questions"]),
        "--reference_file", str(bench_files["references"]), "--first_n", "3", "--model_id", "model-a",
        "--judge_model", JUDGE, "--judge_max_retries", "0",
    ]  # fmt: skip
    script = _load_script("eval_mt_bench_script", REPO / "eval" / "mt_bench.py")
    broken = Fault("garbage_text", nth=1, times=1)
    with StubOpenAIServer(judge_responder, faults=[broken]) as server:
        assert script.main(["judge", "--judge_base_url", server.base_url, *args]) == 0
    assert script.main(["show", *args]) == 2
    out = capsys.readouterr().out
    assert "SCORES WITHHELD" in out and "1 failed judgment(s)" in out
    assert script.main(["show", *args, "--allow_failures", "true"]) == 0
    assert "PARTIAL" in capsys.readouterr().out
    assert (tmp_path / "model_judgment" / f"{JUDGE}_single_radar.png").is_file()
    summary = json.loads((tmp_path / "model_judgment" / f"{JUDGE}_single_summary.json").read_text())
    assert summary["models"]["model-a"]["n_parse_failed"] == 1


def test_recipe_parses_and_rejects_unknown_keys():
    from deita_train.config import parse_config

    script = _load_script("eval_mt_bench_script", REPO / "eval" / "mt_bench.py")
    (cfg,) = parse_config(script.MTBenchConfig, args=["--config", str(REPO / "recipes" / "eval" / "mt_bench.yaml")])
    assert (cfg.judge_model, cfg.max_new_tokens, cfg.allow_failures) == ("gpt-4", 1024, False)
    assert cfg.models() == ["deita-7b-v1.0"]
    with pytest.raises((ValueError, SystemExit)):
        parse_config(script.MTBenchConfig, args=["--judge_modle", "gpt-4"])


def test_summary_without_questions_is_never_complete_and_records_its_question_file(tmp_path):
    qfile = tmp_path / "q.jsonl"
    questions = [{"question_id": 1, "category": "writing", "turns": ["a", "b"]}]
    qfile.write_text("".join(json.dumps(q) + "\n" for q in questions))
    judgments = [
        {"question_id": 1, "model": "m", "judge": ["j", "single-v1"], "turn": t, "score": 7.0, "judgment": "[[7]]"}
        for t in (1, 2)
    ]
    blind = mb.summarize(judgments, judge_model="j")
    assert blind["models"]["m"]["n_missing"] is None and not blind["complete"], "missing ones were never counted"
    full = mb.summarize(judgments, judge_model="j", questions=questions, question_file=qfile)
    assert full["complete"] and full["models"]["m"]["overall"] == 7.0
    assert (full["question_file"], full["n_questions"]) == (str(qfile), 1)
    assert full["question_file_sha256"] == hashlib.sha256(qfile.read_bytes()).hexdigest()
