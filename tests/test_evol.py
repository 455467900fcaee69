"""EVOL scorer-training data: prompts, parsers, seeds, and the whole pipeline against a real local server."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deita_train import evol
from deita_train.config import parse_config
from deita_train.conversations import ConversationError
from deita_train.evol import (
    COMPLEXITY_METHODS,
    QUALITY_METHODS,
    EvolConfig,
    build_evol_sets,
    choose_mutation,
    clean_evolution,
    complexity_evolution_prompt,
    complexity_ranking_prompt,
    demo_seeds,
    load_seeds,
    parse_ranking,
    quality_evolution_prompt,
    quality_ranking_prompt,
    split_seeds,
)
from deita_train.jsonl import read_jsonl, write_jsonl
from deita_train.scorer_prompts import complexity_prompt, quality_prompt
from deita_train.testing.openai_stub import Fault, StubOpenAIServer, evol_responder, last_user_text


REPO = Path(__file__).resolve().parents[1]
DATA_FILES = (*evol.OUTPUT_FILES, "rejects.jsonl", "lineage.jsonl", "demo_seeds.jsonl")
N_SEEDS, M = 8, 5
FULL_RUN_REQUESTS = N_SEEDS * 2 * M + N_SEEDS * 2  # evolutions + one ranking per seed and kind


def _is_rewrite(body: dict) -> bool:
    return last_user_text(body).startswith(evol.PROMPT_REWRITER_HEAD)


def _is_complexity_ranking(body: dict) -> bool:
    return last_user_text(body).startswith(evol.COMPLEXITY_RANKING_HEAD)


def _is_quality_ranking(body: dict) -> bool:
    return last_user_text(body).startswith(evol.QUALITY_RANKING_HEAD)


def _config(out: Path, base_url: str, **overrides) -> EvolConfig:
    cfg = dict(
        seeds_path=f"demo:{N_SEEDS}",
        output_dir=str(out),
        model="stub-model",
        base_url=base_url,
        num_evolutions=M,
        max_concurrency=4,
        max_retries=3,
        timeout=30.0,
        backoff_base=0.001,
        backoff_max=0.01,
        dev_fraction=0.25,
        seed=7,
    )
    cfg.update(overrides)
    return EvolConfig(**cfg)


def _files(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in DATA_FILES}


def _canon(bodies: list[dict]) -> Counter:
    return Counter(json.dumps(b, sort_keys=True) for b in bodies)


def _without_llm(counts: dict) -> dict:
    return {k: v for k, v in counts.items() if k != "llm"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One clean, uninterrupted run: the files every other run must reproduce."""
    out = tmp_path_factory.mktemp("reference")
    with StubOpenAIServer(evol_responder) as server:
        counts = build_evol_sets(_config(out, server.base_url))
        answered = server.answered
        assert server.request_count == len(answered) == FULL_RUN_REQUESTS
    return {"out": out, "files": _files(out), "counts": counts, "answered": answered}


# --------------------------------------------------------------------------- prompts and parsers


def test_evolution_prompts_carry_method_and_text_verbatim():
    text = "Compute {x} for the table below.\n| a | b |"
    prompts = {m: complexity_evolution_prompt(text, m) for m in COMPLEXITY_METHODS}
    assert len(set(prompts.values())) == len(COMPLEXITY_METHODS)
    for mutation, prompt in prompts.items():
        assert prompt.startswith(evol.PROMPT_REWRITER_HEAD)
        assert COMPLEXITY_METHODS[mutation] in prompt
        assert prompt.endswith(f"#Given Prompt#:\n{text}\n#Rewritten Prompt#:\n")
        assert "#Rewritten Prompt# can only add 10 to 20 words" in prompt
    for mutation in QUALITY_METHODS:
        prompt = quality_evolution_prompt("Q?", "A {b}.", mutation)
        assert prompt.startswith(evol.RESPONSE_REWRITER_HEAD) and QUALITY_METHODS[mutation] in prompt
        assert prompt.endswith("#Given Prompt#:\nQ?\n#Given Response#:\nA {b}.\n#Rewritten Response#:\n")


def test_ranking_prompts_use_the_fixed_six_point_scale():
    items = [f"question {i}" for i in range(6)]
    prompt = complexity_ranking_prompt(items)
    assert "Score 1-5." in prompt and "give a score of 6 if the question is too complex" in prompt
    assert prompt.endswith(
        "[1] question 0\n[2] question 1\n[3] question 2\n[4] question 3\n[5] question 4\n[6] question 5\n"
    )
    qprompt = quality_ranking_prompt("Why?", ["a", "b", "c"])
    assert "Score 1-5." in qprompt and "with 6 reserved for responses" in qprompt
    assert qprompt.endswith("#Question#: Why?\n#Response List#:\n[1] a\n[2] b\n[3] c\n")
    for bad in ([], ["only one"], ["x"] * 7):
        with pytest.raises(ValueError, match="2..6 items"):
            complexity_ranking_prompt(bad)


@pytest.mark.parametrize(
    "text,n,scores",
    [
        ("[1] Score: 2\n[2] Score: 5\n[3] Score: 6", 3, [2, 5, 6]),
        ("Here you go:\n**[1] Score: 1**\n[2] score:3\n", 2, [1, 3]),
        ("[2] Score: 4\n[1] Score: 3", 2, [3, 4]),
        ("[1] Score: 2\n[1] Score: 2\n[2] Score: 1", 2, [2, 1]),
    ],
)
def test_parse_ranking_accepts(text, n, scores):
    parsed = parse_ranking(text, n)
    assert parsed.ok and parsed.scores == scores and parsed.error is None and parsed.raw == text


@pytest.mark.parametrize(
    "text,n,why",
    [
        ("I cannot rank these.", 2, "no '[i] Score: k' lines"),
        ("[1] Score: 2", 2, "no score for item(s) [2]"),
        ("[1] Score: 2\n[2] Score: 3\n[3] Score: 4", 2, "only 2 items"),
        ("[1] Score: 7\n[2] Score: 1", 2, "outside 1..6"),
        ("[1] Score: 0\n[2] Score: 1", 2, "outside 1..6"),
        ("[1] Score: 4.5\n[2] Score: 1", 2, "non-integer"),
        ("[1] Score: 2\n[1] Score: 3\n[2] Score: 1", 2, "scored twice"),
        ("", 2, "no '[i] Score: k' lines"),
    ],
)
def test_parse_ranking_fails_explicitly(text, n, why):
    parsed = parse_ranking(text, n)
    assert not parsed.ok and parsed.scores is None and why in parsed.error and parsed.raw == text


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 6), min_size=2, max_size=6), st.randoms(use_true_random=False))
def test_parse_ranking_round_trips_any_order(scores, rnd):
    lines = [f"[{i}] Score: {s}" for i, s in enumerate(scores, start=1)]
    rnd.shuffle(lines)
    assert parse_ranking("\n".join(lines), len(scores)).scores == scores


def test_clean_evolution():
    assert clean_evolution("#Rewritten Prompt#: Do X in 3 steps.", "Do X.", "complexity") == ("Do X in 3 steps.", None)
    assert clean_evolution("**Rewritten Response:** Better.", "Good.", "quality") == ("Better.", None)
    assert clean_evolution("   ", "Do X.", "complexity") == (None, "empty evolution")
    assert clean_evolution("Do X.", "Do X.", "complexity") == (None, "evolution is identical to its parent")
    text, why = clean_evolution("Here is the rewritten prompt: do Y", "Do X.", "complexity")
    assert text is None and "copies the rewriting prompt" in why


def test_mutation_choice_is_a_function_of_seed_id_and_step():
    pool = list(evol.DEFAULT_COMPLEXITY_MUTATIONS)
    picks = [choose_mutation(42, f"s{i}", "complexity", step, pool) for i in range(50) for step in range(1, 6)]
    assert picks == [choose_mutation(42, f"s{i}", "complexity", step, pool) for i in range(50) for step in range(1, 6)]
    assert set(picks) == set(pool)
    assert picks != [choose_mutation(43, f"s{i}", "complexity", step, pool) for i in range(50) for step in range(1, 6)]


def test_split_is_by_seed_seeded_and_never_empty():
    ids = [f"s{i}" for i in range(40)]
    dev = split_seeds(ids, 0.1, 1)
    assert len(dev) == 4
    assert dev == split_seeds(ids, 0.1, 1) and dev != split_seeds(ids, 0.1, 2)
    assert len(split_seeds(ids[:3], 0.01, 1)) == 1 and len(split_seeds(ids[:2], 0.9, 1)) == 1
    assert split_seeds(ids, 0.0, 1) == set()


# --------------------------------------------------------------------------- seeds and config


def test_load_seeds_alpaca_and_conversations(tmp_path):
    rows = [
        {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
        {"id": 17, "instruction": "Say hi.", "output": "Hi!"},
        {
            "id": "c1",
            "conversations": [
                {"from": "system", "value": "Be kind."},
                {"from": "human", "value": "Q1"},
                {"from": "gpt", "value": "A1"},
                {"from": "human", "value": "Q2"},
                {"from": "gpt", "value": "A2"},
            ],
        },
        {"messages": [{"role": "user", "content": "M1"}, {"role": "assistant", "content": "R1"}]},
        {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},  # duplicate content
        {"id": "c1", "instruction": "Other", "output": "x"},  # duplicate id
        {"id": "c2", "conversations": [{"from": "human", "value": "unanswered"}]},
    ]
    path = tmp_path / "seeds.jsonl"
    write_jsonl(path, rows)
    seeds, rejects, n_read = load_seeds(path)
    assert n_read == 7 and len(seeds) == 4 and len(rejects) == 3
    assert seeds[0].instruction == "Add the numbers.\n\n2 and 3" and seeds[0].has_input
    assert seeds[0].id == load_seeds(path)[0][0].id  # stable derived id
    assert (seeds[1].id, seeds[1].has_input) == ("17", False)
    assert (seeds[2].id, seeds[2].instruction, seeds[2].response) == ("c1", "Q1", "A1")
    assert (seeds[3].instruction, seeds[3].response) == ("M1", "R1")
    assert [r["stage"] for r in rejects] == ["load"] * 3
    assert "duplicate content" in rejects[0]["reason"] and "duplicate id" in rejects[1]["reason"]
    assert "no gpt answer" in rejects[2]["reason"]
    json_path = tmp_path / "seeds.json"
    json_path.write_text(json.dumps(rows[:2]))
    assert [s.id for s in load_seeds(json_path, max_seeds=1)[0]] == [seeds[0].id]


@pytest.mark.parametrize(
    "row,field",
    [
        ({"instruction": "x"}, "output"),
        ({"instruction": "", "output": "y"}, "instruction"),
        ({"instruction": "x", "input": 3, "output": "y"}, "input"),
        ({"prompt": "x", "completion": "y"}, "instruction"),
        ({"conversations": [{"from": "gpt", "value": "y"}]}, "conversations[0].from"),
    ],
)
def test_bad_seed_records_raise_naming_record_and_field(tmp_path, row, field):
    path = tmp_path / "bad.jsonl"
    write_jsonl(path, [{"instruction": "fine", "output": "fine"}, row])
    with pytest.raises(ConversationError) as info:
        load_seeds(path)
    assert info.value.index == 1 and info.value.field == field and "record 1" in str(info.value)


def test_demo_seeds_are_unique_and_some_have_inputs():
    rows = demo_seeds(60)
    assert len({r["instruction"] for r in rows}) == 60 and len({r["id"] for r in rows}) == 60
    assert any(r["input"] for r in rows[:8])
    assert demo_seeds(5) == rows[:5]
    with pytest.raises(ValueError):
        demo_seeds(10_000)


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"num_evolutions": 6}, "num_evolutions"),
        ({"num_evolutions": 0}, "num_evolutions"),
        ({"complexity_mutations": ["constraints", "breadth"]}, "unknown mutation"),
        ({"quality_mutations": []}, "empty"),
        ({"dev_fraction": 1.0}, "dev_fraction"),
    ],
)
def test_bad_configuration_is_refused_before_any_request(tmp_path, overrides, match):
    with StubOpenAIServer(evol_responder) as server:
        with pytest.raises(ValueError, match=match):
            build_evol_sets(_config(tmp_path, server.base_url, **overrides))
        assert server.request_count == 0


def test_recipes_parse():
    for recipe in sorted((REPO / "recipes" / "evol").glob("*.yaml")):
        (cfg,) = parse_config(EvolConfig, args=["--config", str(recipe)])
        cfg.validate()
        assert cfg.num_evolutions == 5


# --------------------------------------------------------------------------- the pipeline


def test_full_run_writes_scorer_training_sets(reference):
    out, counts = reference["out"], reference["counts"]
    seeds = {r["id"]: r for r in read_jsonl(out / "demo_seeds.jsonl")}
    assert counts["seeds"] == N_SEEDS and counts["rejects"] == 0
    for kind in evol.KINDS:
        k = counts[kind]
        assert k["evolutions_requested"] == k["evolutions_made"] == N_SEEDS * M
        assert k["rankings_parsed"] == N_SEEDS and k["records"] == N_SEEDS * (M + 1)
    assert counts["llm"]["requests_sent"] == FULL_RUN_REQUESTS and counts["llm"]["cache_hits"] == 0
    sides: dict[str, set[str]] = {"train": set(), "dev": set()}
    ids = set()
    for name in evol.OUTPUT_FILES:
        kind, side = name.removesuffix(".jsonl").split("_")
        records = read_jsonl(out / name)
        assert len(records) == counts["records"][name.removesuffix(".jsonl")]
        for r in records:
            assert set(r) == {"id", "prompt", "completion", "score", "kind", "seed_id", "variant"}
            assert r["kind"] == kind and r["completion"] == str(r["score"]) and 1 <= r["score"] <= 6
            sides[side].add(r["seed_id"])
            ids.add(r["id"])
            seed = seeds[r["seed_id"]]
            query = evol.seed_query(seed["instruction"], seed["input"])
            if kind == "complexity":
                assert r["prompt"].startswith(complexity_prompt("")[: -len("  \n##Complexity: ")])
                if r["variant"] == 0:
                    assert r["prompt"] == complexity_prompt(query)
            else:
                assert r["prompt"].startswith(quality_prompt(query, "").split("\n#Response#:")[0])
                if r["variant"] == 0:
                    assert r["prompt"] == quality_prompt(query, seed["output"])
        variants = Counter(r["seed_id"] for r in records)
        assert set(variants.values()) == {M + 1}
    assert len(ids) == 2 * N_SEEDS * (M + 1)
    assert sides["train"] and sides["dev"] and not sides["train"] & sides["dev"]  # no lineage crosses the split
    assert counts["seeds_dev"] == len(sides["dev"]) == 2
    # the stub scores by length and evolutions only grow, so the LLM's scores are 1..6 in variant order
    c_train = read_jsonl(out / "complexity_train.jsonl")
    assert [r["score"] for r in c_train[: M + 1]] == list(range(1, M + 2))
    lineage = read_jsonl(out / "lineage.jsonl")
    assert [(x["seed_id"], x["kind"]) for x in lineage] == [(s, k) for s in seeds for k in evol.KINDS]
    assert all(x["status"] == "ranked" and len(x["mutations"]) == M and len(x["texts"]) == M + 1 for x in lineage)
    assert {x["seed_id"] for x in lineage if x["split"] == "dev"} == sides["dev"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["records"] == counts["records"]
    assert manifest["inputs"][0]["path"].endswith("demo_seeds.jsonl")


def test_every_mutation_is_used_and_complicate_input_only_with_input(reference):
    prompts = [last_user_text(b) for b in reference["answered"] if _is_rewrite(b)]
    used = Counter(next(m for m, method in COMPLEXITY_METHODS.items() if method in p) for p in prompts)
    assert set(used) == set(COMPLEXITY_METHODS)
    seeds = read_jsonl(reference["out"] / "demo_seeds.jsonl")
    no_input = [s["instruction"] for s in seeds if not s["input"]]
    for p in prompts:
        if COMPLEXITY_METHODS["complicate_input"] in p:
            assert not any(p.split(evol.GIVEN_PROMPT_MARK)[1].startswith(q) for q in no_input)


def test_mutation_mix_option(tmp_path):
    with StubOpenAIServer(evol_responder) as server:
        build_evol_sets(
            _config(
                tmp_path,
                server.base_url,
                num_evolutions=2,
                complexity_mutations=["reasoning"],
                complicate_input=False,
                quality_mutations=["details"],
            )
        )
        rewrites = [last_user_text(b) for b in server.requests if _is_rewrite(b)]
        responses = [
            last_user_text(b) for b in server.requests if last_user_text(b).startswith(evol.RESPONSE_REWRITER_HEAD)
        ]
    assert len(rewrites) == len(responses) == 2 * N_SEEDS
    assert all(COMPLEXITY_METHODS["reasoning"] in p for p in rewrites)
    assert all(QUALITY_METHODS["details"] in p for p in responses)
    records = read_jsonl(tmp_path / "complexity_train.jsonl") + read_jsonl(tmp_path / "complexity_dev.jsonl")
    assert len(records) == N_SEEDS * 3


def test_rerun_is_free_and_identical(reference, tmp_path):
    with StubOpenAIServer(evol_responder) as server:
        first_counts = build_evol_sets(_config(tmp_path, server.base_url))
        first = _files(tmp_path)
        sent = server.request_count
        counts = build_evol_sets(_config(tmp_path, server.base_url))
        assert server.request_count == sent == FULL_RUN_REQUESTS
    assert _files(tmp_path) == first == reference["files"]
    assert counts["llm"]["requests_sent"] == 0 and counts["llm"]["cache_hits"] == FULL_RUN_REQUESTS
    # the rerun paid nothing, yet its job totals still say what the whole job cost
    assert counts["llm"]["prompt_tokens"] == 0 < counts["llm"]["job_prompt_tokens"]
    for k in ("job_requests", "job_prompt_tokens", "job_completion_tokens"):
        assert counts["llm"][k] == first_counts["llm"][k]
    assert first_counts["llm"]["job_prompt_tokens"] == first_counts["llm"]["prompt_tokens"]


@pytest.mark.parametrize(
    "fault",
    [
        Fault("500", nth=5, times=3),
        Fault("429", nth=20, times=3, retry_after=0.0),
        Fault("truncated_json", match=_is_complexity_ranking, times=3),
        Fault("timeout", nth=40, times=2, sleep=60.0),
    ],
    ids=lambda f: f.kind,
)
def test_transient_faults_change_nothing(reference, tmp_path, fault):
    with StubOpenAIServer(evol_responder, faults=[fault]) as server:
        timeout = 1.5 if fault.kind == "timeout" else 30.0  # long enough that only the injected hang times out
        counts = build_evol_sets(_config(tmp_path, server.base_url, timeout=timeout))
        assert server.faults_fired == [fault.kind] * fault.times
        assert len(server.answered) == FULL_RUN_REQUESTS
        assert server.request_count == FULL_RUN_REQUESTS + fault.times
    assert _files(tmp_path) == reference["files"]
    assert _without_llm(counts) == _without_llm(reference["counts"])
    assert counts["llm"]["retries"] == fault.times and counts["llm"]["failures"] == 0


def test_permanent_failures_are_counted_listed_and_never_scored(reference, tmp_path):
    seeds = demo_seeds(N_SEEDS)
    sort_seed, poem_seed, tips_seed = seeds[1], seeds[2], seeds[4]

    def responder(body: dict) -> str | dict | None:
        text = last_user_text(body)
        answer = evol_responder(body)
        if _is_quality_ranking(body) and tips_seed["instruction"] in text:
            return "\n".join(answer.splitlines()[:-1])  # a ranking that leaves out the last item
        given = text.split(evol.GIVEN_PROMPT_MARK)[-1].split(evol.REWRITTEN_PROMPT_MARK)[0]
        if _is_rewrite(body) and given.startswith(poem_seed["instruction"]) and given != poem_seed["instruction"]:
            return {"content": answer[:20], "finish_reason": "length"}  # step 2 is cut off
        return answer

    faults = [
        Fault("500", match=lambda b: _is_rewrite(b) and sort_seed["instruction"] in last_user_text(b), times=None),
        Fault("garbage_text", match=_is_complexity_ranking, nth=3, times=2, text="All of them are hard."),
    ]
    with StubOpenAIServer(responder, faults=faults) as server:
        counts = build_evol_sets(_config(tmp_path, server.base_url, max_retries=1))
    c, q = counts["complexity"], counts["quality"]
    assert (c["chains_failed"], c["rankings_failed"], c["rankings_parsed"]) == (2, 2, N_SEEDS - 4)
    assert (q["chains_failed"], q["rankings_failed"], q["rankings_parsed"]) == (0, 1, N_SEEDS - 1)
    assert c["evolutions_failed"] == 2 and c["evolutions_made"] + c["evolutions_failed"] == c["evolutions_requested"]
    assert counts["llm"]["failures"] == 1
    rejects = read_jsonl(tmp_path / "rejects.jsonl")
    assert counts["rejects"] == len(rejects) == 5
    by_stage = Counter(r["stage"] for r in rejects)
    assert by_stage == {"evolve_complexity": 2, "rank_complexity": 2, "rank_quality": 1}
    evolve = {r["seed_id"]: r for r in rejects if r["stage"] == "evolve_complexity"}
    assert "HTTP 500" in evolve[sort_seed["id"]]["reason"] and evolve[sort_seed["id"]]["raw"] is None
    assert (
        "finish_reason=length" in evolve[poem_seed["id"]]["reason"] and "step 2" in evolve[poem_seed["id"]]["reason"]
    )
    garbage = [r for r in rejects if r["stage"] == "rank_complexity"]
    assert all(r["raw"] == "All of them are hard." and "did not parse" in r["reason"] for r in garbage)
    (rank_q,) = [r for r in rejects if r["stage"] == "rank_quality"]
    assert rank_q["seed_id"] == tips_seed["id"] and "no score for item(s) [6]" in rank_q["reason"]
    # every seed is accounted for, per kind, exactly once: records or a reject
    for kind in evol.KINDS:
        recorded = {r["seed_id"] for side in ("train", "dev") for r in read_jsonl(tmp_path / f"{kind}_{side}.jsonl")}
        rejected = [r["seed_id"] for r in rejects if r["stage"].endswith(kind)]
        assert len(rejected) == len(set(rejected)) and not recorded & set(rejected)
        assert recorded | set(rejected) == {s["id"] for s in seeds}
    # records that were written are exactly the reference's for the seeds that survived
    ref_q = read_jsonl(reference["out"] / "quality_train.jsonl") + read_jsonl(reference["out"] / "quality_dev.jsonl")
    got_q = read_jsonl(tmp_path / "quality_train.jsonl") + read_jsonl(tmp_path / "quality_dev.jsonl")
    assert got_q == [r for r in ref_q if r["seed_id"] != tips_seed["id"]]
    lineage = read_jsonl(tmp_path / "lineage.jsonl")
    statuses = Counter((x["kind"], x["status"]) for x in lineage)
    assert statuses == {
        ("complexity", "ranked"): N_SEEDS - 4,
        ("complexity", "chain_failed"): 2,
        ("complexity", "ranking_failed"): 2,
        ("quality", "ranked"): N_SEEDS - 1,
        ("quality", "ranking_failed"): 1,
    }
    assert all(x["scores"] is None for x in lineage if x["status"] != "ranked")
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert sorted(manifest["rejected_seed_ids"]["rank_complexity"]) == sorted(r["seed_id"] for r in garbage)


def test_fewer_evolutions(tmp_path):
    with StubOpenAIServer(evol_responder) as server:
        counts = build_evol_sets(_config(tmp_path, server.base_url, num_evolutions=2))
        ranking = next(last_user_text(b) for b in server.requests if _is_complexity_ranking(b))
    assert counts["complexity"]["records"] == N_SEEDS * 3
    assert "[3] " in ranking and "[4] " not in ranking.split(evol.RANKING_FORMAT_TAIL)[1]


def test_killed_run_resumes_without_repeating_a_request(reference, tmp_path):
    """SIGKILL a real subprocess mid-run, rerun the same recipe: same files, no answered request sent twice."""
    answered_before_kill = 24  # mid round 2; the requests after it hang until the process is killed
    workers = 4
    out = tmp_path / "out"
    with StubOpenAIServer(
        evol_responder, faults=[Fault("timeout", nth=answered_before_kill, times=None, sleep=600)]
    ) as server:
        cfg = dataclasses.asdict(_config(out, server.base_url, max_concurrency=workers, timeout=300.0))
        recipe = tmp_path / "recipe.yaml"
        recipe.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in cfg.items() if v is not None))
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
        log = tmp_path / "run1.log"
        with open(log, "wb") as stderr:
            proc = subprocess.Popen(
                [sys.executable, str(REPO / "data_prep" / "evol.py"), "--config", str(recipe)],
                cwd=REPO,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        try:
            deadline = time.monotonic() + 120
            while server.request_count < answered_before_kill + workers or len(server.answered) < answered_before_kill:
                assert proc.poll() is None, log.read_text()[-2000:]
                assert time.monotonic() < deadline, "the run never reached the hang point"
                time.sleep(0.05)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert proc.returncode == -signal.SIGKILL
        first_answered = server.answered
        assert server.request_count == answered_before_kill + workers and len(first_answered) == answered_before_kill
        assert not (out / "manifest.json").exists()
        received_before = server.request_count

        server.faults.clear()
        (rerun_cfg,) = parse_config(EvolConfig, args=["--config", str(recipe)])
        counts = build_evol_sets(rerun_cfg)
        second_sent = server.request_count - received_before
        second_answered = server.answered[len(first_answered) :]

    assert _files(out) == reference["files"]
    assert _without_llm(counts) == _without_llm(reference["counts"])
    # the rerun sends exactly what the killed run never got answered ...
    assert second_sent == counts["llm"]["requests_sent"] == FULL_RUN_REQUESTS - answered_before_kill
    assert counts["llm"]["cache_hits"] == answered_before_kill
    # ... so across both runs every request was answered exactly once, as in one uninterrupted run
    both = _canon(first_answered) + _canon(second_answered)
    assert both == _canon(reference["answered"]) and max(both.values()) == 1


# The two prompts the Deita paper's appendix prints (as quoted in the project's seeds), with the
# paper's line wrapping folded into single spaces: pinned in full, character for character.
APPENDIX_ADD_CONSTRAINTS = (
    "I want you act as a Prompt Rewriter. Your objective is to rewrite a given prompt into a more complex version to "
    "make those famous AI systems (e.g., ChatGPT and GPT4) a bit harder to handle. But the rewritten prompt must be "
    "reasonable and must be understood and responded by humans. Your rewriting cannot omit the non-text parts such "
    "as the table and code in #Given Prompt#:. Also, please do not omit the input in #Given Prompt#. You SHOULD "
    "complicate the given prompt using the following method: Please add one more constraints/requirements into "
    "#Given Prompt# You should try your best not to make the #Rewritten Prompt# become verbose, #Rewritten Prompt# "
    "can only add 10 to 20 words into #Given Prompt#. ‘#Given Prompt#’, ‘#Rewritten Prompt#’, ‘given prompt’ and "
    "‘rewritten prompt’ are not allowed to appear in #Rewritten Prompt# #Given Prompt#: <Here is instruction> "
    "#Rewritten Prompt#:"
)
APPENDIX_IN_DEPTH_RESPONSE = (
    "I want you to act as a Response Rewriter Your goal is to enhance the quality of the response given by an AI "
    "assistant to the #Given Prompt# through rewriting. But the rewritten response must be reasonable and must be "
    "understood by humans. Your rewriting cannot omit the non-text parts such as the table and code in #Given "
    "Prompt# and #Given Response#. Also, please do not omit the input in #Given Prompt#. You Should enhance the "
    "quality of the response using the following method: Please make the Response more in-depth You should try "
    "your best not to make the #Rewritten Response# become verbose, #Rewritten Response# can only add 10 to 20 words "
    "into #Given Response#. ‘#Given Response#’, ‘#Rewritten Response#’, ‘given response’ and ‘rewritten response’ "
    "are not allowed to appear in #Rewritten Response# #Given Prompt#: <instruction_0> #Given Response#: "
    "<response_0> #Rewritten Response#:"
)


def _folded(text: str) -> str:
    return " ".join(text.split())


def test_evolution_prompts_are_the_papers_appendix_wording():
    assert _folded(complexity_evolution_prompt("<Here is instruction>", "constraints")) == APPENDIX_ADD_CONSTRAINTS
    assert _folded(quality_evolution_prompt("<instruction_0>", "<response_0>", "depth")) == APPENDIX_IN_DEPTH_RESPONSE


def test_appendix_wording_matches_the_seed_document():
    seeds = Path(__file__).resolve().parents[2] / "shared" / "seeds"
    texts = [_folded(p.read_text(encoding="utf-8")) for p in seeds.glob("*.txt")] if seeds.is_dir() else []
    if not texts:
        pytest.skip(f"seed documents not present at {seeds}")
    assert any(APPENDIX_ADD_CONSTRAINTS in t for t in texts)
    assert any(APPENDIX_IN_DEPTH_RESPONSE in t for t in texts)
