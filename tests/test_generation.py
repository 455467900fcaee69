"""Answer generation: the checkpoint's own template, FastChat's sampling rules, stop at EOS, resumable files."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from deita_train.evaluation import generation as gen
from deita_train.evaluation import mt_bench as mb
from deita_train.evaluation.records import read_log
from deita_train.templates import render_conversation


REPO = Path(__file__).resolve().parents[1]


class RecordingGenerator:
    """A stand-in model: replies name the question they answer; every call is recorded; can crash on cue."""

    def __init__(self, batch_size: int = 2, crash_on_call: int | None = None) -> None:
        self.batch_size = batch_size
        self.crash_on_call = crash_on_call
        self.calls: list[dict] = []

    def chat(self, conversations, temperatures, max_new_tokens, seed=None, top_p=None):
        self.calls.append(
            {"conversations": [list(c) for c in conversations], "temperatures": list(temperatures), "seed": seed}
        )
        if self.crash_on_call is not None and len(self.calls) == self.crash_on_call:
            raise RuntimeError("simulated crash")
        return [f"reply {len(c) // 2 + 1} to <{c[-1]['content'][:24]}>" for c in conversations]


@pytest.fixture(scope="module")
def demo_questions():
    return mb.load_questions(mb.DEMO_QUESTIONS)


# ------------------------------------------------------------------ with the tiny checkpoint


@pytest.fixture(scope="module")
def tiny_generator(tiny_mistral):
    return gen.HFChatGenerator(tiny_mistral, device="cpu", batch_size=3)


def test_prompts_are_the_checkpoint_template_with_turn_one_in_turn_two(tiny_generator):
    """The ids fed to `generate` are the vicuna_v1.1 rendering, turn 2 carrying the model's turn-1 answer."""
    seen = []
    original = tiny_generator.model.generate

    def spy(**kwargs):
        seen.append(kwargs["input_ids"][0].tolist())
        return original(**kwargs)

    tiny_generator.model.generate = spy
    try:
        first = tiny_generator.chat([[{"role": "user", "content": "What is 2+2?"}]], [0.0], 5)[0]
        conv = [
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": first},
            {"role": "user", "content": "And 3+3?"},
        ]
        tiny_generator.chat([conv], [0.0], 5)
    finally:
        tiny_generator.model.generate = original
    tok = tiny_generator.tokenizer
    expected = tok(render_conversation(conv, add_generation_prompt=True), add_special_tokens=True)["input_ids"]
    assert seen[1] == expected
    assert seen[0] == seen[1][: len(seen[0])]  # turn 2 extends turn 1's prompt
    assert tok.decode(seen[1][len(seen[0]) :], skip_special_tokens=True).strip().startswith(first)


def test_left_padded_batches_match_one_at_a_time(tiny_generator):
    convs = [[{"role": "user", "content": t}] for t in ("Hi", "Tell me a story about a dragon and a knight", "x")]
    batched = tiny_generator.chat(convs, [0.0] * 3, 10)
    assert batched == [tiny_generator.chat([c], [0.0], 10)[0] for c in convs]


def test_sampling_is_reproducible_from_the_seed(tiny_generator):
    convs = [[{"role": "user", "content": "Write a poem."}]]
    a = tiny_generator.chat(convs, [0.7], 12, seed=1)
    assert a == tiny_generator.chat(convs, [0.7], 12, seed=1)
    assert a != tiny_generator.chat(convs, [0.0], 12)  # sampled, not greedy


@pytest.fixture(scope="module")
def eos_after_world(tiny_mistral, tmp_path_factory):
    """A checkpoint wired to say '▁world' after any token and `</s>` after it: it stops only through EOS."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("eos") / "model"
    tok = AutoTokenizer.from_pretrained(tiny_mistral)
    model = AutoModelForCausalLM.from_pretrained(tiny_mistral)
    (piece,) = tok.tokenize("world")  # one SentencePiece token, '▁world'
    word_id = tok.convert_tokens_to_ids(piece)
    with torch.no_grad():
        for layer in model.model.layers:  # layers add nothing: the last hidden state is the token's embedding
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb = model.model.embed_tokens.weight
        emb.zero_()
        emb[:, 0] = 1.0
        emb[word_id, 0], emb[word_id, 1] = 0.0, 1.0
        model.model.norm.weight.fill_(1.0)
        model.lm_head.weight.zero_()
        model.lm_head.weight[word_id, 0] = 10.0
        model.lm_head.weight[tok.eos_token_id, 1] = 10.0
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_generation_stops_at_eos_and_drops_it(eos_after_world):
    g = gen.HFChatGenerator(eos_after_world, device="cpu")
    assert g.chat([[{"role": "user", "content": "Say world"}]], [0.0], 50) == ["world"]


def test_tiny_model_writes_fastchat_answers(tiny_generator, demo_questions, tmp_path):
    path = tmp_path / "model_answer" / "tiny.jsonl"
    counts = gen.generate_mt_bench_answers(tiny_generator, demo_questions[:3], path, "tiny", max_new_tokens=6)
    assert counts == {"n_questions": 3, "n_already_answered": 0, "n_generated": 3}
    answers = mb.load_answers(path)
    assert sorted(answers) == sorted(q["question_id"] for q in demo_questions[:3])
    for rec in answers.values():
        assert set(rec) == {"question_id", "answer_id", "model_id", "choices", "tstamp"}
        assert rec["model_id"] == "tiny" and len(rec["choices"][0]["turns"]) == 2
        assert all(isinstance(t, str) and "</s>" not in t for t in rec["choices"][0]["turns"])


# ------------------------------------------------------------------ generation logic (recording stand-in)


def test_fastchat_temperatures_seeds_and_turn_conditioning(demo_questions, tmp_path):
    g = RecordingGenerator(batch_size=1)
    path = tmp_path / "a.jsonl"
    gen.generate_mt_bench_answers(g, demo_questions, path, "rec", max_new_tokens=7, num_choices=2)
    assert len(g.calls) == len(demo_questions) * 2 * 2  # questions x choices x turns
    for q_index, q in enumerate(demo_questions):
        calls = g.calls[q_index * 4 : (q_index + 1) * 4]
        for choice in range(2):
            t1, t2 = calls[2 * choice], calls[2 * choice + 1]
            assert t1["temperatures"] == t2["temperatures"] == [mb.TEMPERATURE_CONFIG[q["category"]]]
            assert (t1["seed"], t2["seed"]) == (choice, None)  # FastChat: torch.manual_seed(i) once per choice
            reply_1 = f"reply 1 to <{q['turns'][0][:24]}>"
            assert t2["conversations"][0] == [
                {"role": "user", "content": q["turns"][0]},
                {"role": "assistant", "content": reply_1},
                {"role": "user", "content": q["turns"][1]},
            ]
    answers = list(read_log(path))
    assert [a["question_id"] for a in answers] == sorted(q["question_id"] for q in demo_questions)
    assert len({a["answer_id"] for a in answers}) == len(answers)
    assert [c["index"] for c in answers[0]["choices"]] == [0, 1]


def test_unknown_category_and_override_temperatures():
    assert gen.question_temperature({"category": "poetry"}) == mb.DEFAULT_TEMPERATURE == 0.7
    assert gen.question_temperature({"category": "math"}) == 0.0
    assert gen.question_temperature({"category": "math"}, override=0.3) == 0.3


def test_answers_resume_after_a_crash_without_duplicates(demo_questions, tmp_path):
    path = tmp_path / "a.jsonl"
    with pytest.raises(RuntimeError, match="simulated crash"):
        gen.generate_mt_bench_answers(RecordingGenerator(crash_on_call=5), demo_questions, path, "rec", 5)
    before = {r["question_id"]: r["answer_id"] for r in read_log(path)}
    assert len(before) == 4  # two finished batches of two questions
    again = RecordingGenerator()
    counts = gen.generate_mt_bench_answers(again, demo_questions, path, "rec", 5)
    assert counts == {"n_questions": 8, "n_already_answered": 4, "n_generated": 4}
    after = read_log(path)
    assert len(after) == len({r["question_id"] for r in after}) == 8
    assert all(next(r for r in after if r["question_id"] == q)["answer_id"] == a for q, a in before.items())
    asked = {c["conversations"][0][0]["content"] for c in again.calls}
    assert not asked & {q["turns"][0] for q in demo_questions if q["question_id"] in before}


def test_alpaca_outputs_keep_order_and_resume(tmp_path):
    instructions = [{"instruction": f"Instruction number {i}", "dataset": f"set{i % 2}"} for i in range(7)]
    out = tmp_path / "model_outputs.json"
    with pytest.raises(RuntimeError):
        gen.generate_alpaca_outputs(RecordingGenerator(batch_size=2, crash_on_call=3), instructions, out, "mine", 9)
    assert not out.exists() and len(read_log(out.with_name(out.name + ".partial.jsonl"))) == 4
    g = RecordingGenerator(batch_size=2)
    counts = gen.generate_alpaca_outputs(g, instructions, out, "mine", 9, temperature=0.7, seed=5)
    assert counts == {"n_instructions": 7, "n_already_generated": 4, "n_generated": 3}
    assert all(c["temperatures"] == [0.7] * len(c["conversations"]) for c in g.calls)
    rows = json.loads(out.read_text())
    assert [r["instruction"] for r in rows] == [i["instruction"] for i in instructions]
    assert all(r["output"] == f"reply 1 to <{r['instruction'][:24]}>" for r in rows)
    assert {(r["generator"], r["dataset"]) for r in rows} == {("mine", "set0"), ("mine", "set1")}
    shuffled = instructions[::-1]
    with pytest.raises(ValueError, match="belongs to another run"):
        gen.generate_alpaca_outputs(RecordingGenerator(), shuffled, out, "mine", 9)


def test_backend_choice():
    with pytest.raises(ValueError, match="backend"):
        gen.load_generator("x", backend="tgi")
    from deita_train.vllm_backend import vllm_available

    if not vllm_available():
        with pytest.raises(ImportError, match="vllm"):
            gen.load_generator("x", backend="vllm")


def test_vllm_backend_matches_the_template(tiny_mistral):
    from deita_train.vllm_backend import vllm_available

    if not vllm_available():
        pytest.skip("vLLM with a CUDA GPU is not available")
    g = gen.VLLMChatGenerator(tiny_mistral, dtype="float32", gpu_memory_utilization=0.2)
    out = g.chat([[{"role": "user", "content": "Hi"}]] * 2, [0.0, 0.7], 8, seed=0)
    assert len(out) == 2 and all(isinstance(o, str) for o in out)


# ------------------------------------------------------------------ the runnable steps and the demo hook


def _load_script(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_gen_steps_with_the_tiny_checkpoint(tiny_mistral, tmp_path):
    mt = _load_script("eval_mt_bench_gen", REPO / "eval" / "mt_bench.py")
    args = ["gen", "--bench_dir", str(tmp_path / "mt"), "--question_file", str(mb.DEMO_QUESTIONS), "--first_n", "2"]
    args += ["--model_path", str(tiny_mistral), "--model_id", "tiny", "--max_new_tokens", "4", "--backend", "hf"]
    assert mt.main(args) == 0
    answers = mb.answer_file(tmp_path / "mt", "tiny")
    assert len(mb.load_answers(answers)) == 2
    manifest = json.loads(answers.with_suffix(".manifest.json").read_text())
    assert manifest["counts"]["n_generated"] == 2 and manifest["config"]["max_new_tokens"] == 4

    reference = tmp_path / "reference.json"
    rows = [{"instruction": f"Question {i}?", "output": "ref", "generator": "base", "dataset": "d"} for i in range(3)]
    reference.write_text(json.dumps(rows))
    ae = _load_script("eval_alpaca_eval_gen", REPO / "eval" / "alpaca_eval.py")
    args = ["gen", "--output_dir", str(tmp_path / "ae"), "--reference_file", str(reference), "--max_instances", "2"]
    args += ["--model_path", str(tiny_mistral), "--generator", "tiny", "--max_new_tokens", "4", "--backend", "hf"]
    assert ae.main(args) == 0
    outputs = json.loads((tmp_path / "ae" / "model_outputs.json").read_text())
    assert [o["instruction"] for o in outputs] == ["Question 0?", "Question 1?"]
    assert {o["generator"] for o in outputs} == {"tiny"}


def test_demo_hook_runs_end_to_end(tiny_mistral, tmp_path):
    result = mb.run_demo_eval(tiny_mistral, tmp_path / "demo", n_questions=2, max_new_tokens=8)
    summary = result["summary"]["models"]["tiny-chat"]
    assert (summary["n_judgments"], summary["n_failed"], summary["n_missing"]) == (4, 0, 0)
    assert "tiny-chat" in result["table"] and f"{summary['overall']:.4f}" in result["table"]
    assert result["radar_plot"].read_bytes().startswith(b"\x89PNG")
