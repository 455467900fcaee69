"""Pool builder: every source format from small local files, ids, repairs, rejects, dedup, counts."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from deita_train.config import parse_config
from deita_train.conversations import load_conversations
from deita_train.jsonl import read_jsonl, write_json, write_jsonl
from deita_train.pools import (
    PoolConfig,
    alpaca_query,
    build_pool,
    demo_records,
    detect_format,
    normalise_record,
    reason_key,
)


REPO = Path(__file__).resolve().parents[1]


def h(v: str) -> dict:
    return {"from": "human", "value": v}


def g(v: str) -> dict:
    return {"from": "gpt", "value": v}


def build(tmp_path: Path, sources: list[dict], **kw) -> tuple[dict, list[dict], list[dict], dict]:
    out = tmp_path / "out"
    counts = build_pool(PoolConfig(sources=sources, output_dir=str(out), **kw))
    manifest = json.loads((out / "manifest.json").read_text())
    return counts, read_jsonl(out / "pool.jsonl"), read_jsonl(out / "rejects.jsonl"), manifest


def by_id(records: list[dict]) -> dict[str, dict]:
    return {r["id"]: r for r in records}


def reasons(rejects: list[dict]) -> dict[str, dict]:
    return {r["id"]: r for r in rejects}


# --------------------------------------------------------------------------- ShareGPT


SHAREGPT = [
    {"id": "a", "conversations": [h("Hi"), g("Hello")], "model": "gpt-4"},
    {"id": "b", "conversations": [{"from": "user", "value": "Q"}, {"from": "chatgpt", "value": "A"}]},
    {"id": "c", "conversations": [{"from": "Human", "value": "Q"}, {"from": "bing", "value": "A"}]},
    {"id": "d", "conversations": [{"from": "system", "value": "Be brief."}, h("Q"), {"from": "bard", "value": "A"}]},
    {"id": "e", "conversations": [h("Q"), {"from": "assistant", "value": "  keep my spaces  "}]},
    {"id": "lead", "conversations": [g("I speak first"), h("Q"), g("A")]},
    {"id": "twice", "conversations": [h("Q1"), h("Q2"), g("A")]},
    {"id": "role", "conversations": [h("Q"), {"from": "robot", "value": "A"}]},
    {"id": "empty", "conversations": [h("Q"), g("")]},
    {"id": "none", "conversations": [h("Q"), {"from": "gpt", "value": None}]},
]


def test_sharegpt_roles_mapped_text_untouched_and_bad_turn_orders_rejected(tmp_path):
    path = tmp_path / "sharegpt.json"
    write_json(path, SHAREGPT)
    counts, pool, rejects, manifest = build(
        tmp_path, [{"name": "sg", "path_or_hub_id": str(path), "format": "sharegpt"}]
    )
    recs = by_id(pool)
    assert set(recs) == {"sg:a", "sg:b", "sg:c", "sg:d", "sg:e"}
    assert [t["from"] for t in recs["sg:b"]["conversations"]] == ["human", "gpt"]
    assert [t["from"] for t in recs["sg:c"]["conversations"]] == ["human", "gpt"]
    assert [t["from"] for t in recs["sg:d"]["conversations"]] == ["system", "human", "gpt"]
    assert recs["sg:e"]["conversations"][1]["value"] == "  keep my spaces  "
    assert recs["sg:a"]["model"] == "gpt-4" and recs["sg:a"]["source"] == "sg"

    rej = reasons(rejects)
    assert set(rej) == {"sg:lead", "sg:twice", "sg:role", "sg:empty", "sg:none"}
    assert rej["sg:lead"]["field"] == "conversations[0].from" and "start with a human turn" in rej["sg:lead"]["reason"]
    assert (
        rej["sg:twice"]["field"] == "conversations[1].from"
        and "two 'human' turns in a row" in rej["sg:twice"]["reason"]
    )
    assert rej["sg:role"]["field"] == "conversations[1].from" and "unknown role 'robot'" in rej["sg:role"]["reason"]
    assert rej["sg:empty"]["field"] == "conversations[1].value"
    assert rej["sg:none"]["field"] == "conversations[1].value" and "must be a string" in rej["sg:none"]["reason"]
    for r in rejects:
        assert r["source"] == "sg" and isinstance(r["index"], int) and r["reason"]
    assert rej["sg:lead"]["index"] == 5

    c = counts["sources"]["sg"]
    assert (c["in"], c["kept"], c["rejected"], c["duplicates"]) == (10, 5, 5, 0)
    assert sum(c["rejected_by_reason"].values()) == 5
    assert manifest["counts"]["sources"]["sg"] == c
    assert manifest["step"] == "build_pool" and manifest["inputs"][0]["path"] == str(path)


def test_repair_drop_leading_gpt_keeps_system_turn_and_is_counted(tmp_path):
    path = tmp_path / "sharegpt.jsonl"
    write_jsonl(
        path,
        [
            {"id": "x", "conversations": [g("hello"), g("again"), h("Q"), g("A")]},
            {"id": "y", "conversations": [{"from": "system", "value": "S"}, g("hello"), h("Q"), g("A")]},
            {"id": "z", "conversations": [g("only a reply")]},
            {"id": "w", "conversations": [h("Q"), g("A"), g("A2")]},  # still rejected: not a leading turn
        ],
    )
    src = {"name": "sg", "path_or_hub_id": str(path), "format": "sharegpt", "repair": "drop_leading_gpt"}
    counts, pool, rejects, _ = build(tmp_path, [src])
    recs = by_id(pool)
    assert recs["sg:x"]["conversations"] == [h("Q"), g("A")]
    assert recs["sg:y"]["conversations"] == [{"from": "system", "value": "S"}, h("Q"), g("A")]
    rej = reasons(rejects)
    assert set(rej) == {"sg:z", "sg:w"} and rej["sg:z"]["reason"].startswith("empty conversation")
    assert rej["sg:w"]["field"] == "conversations[2].from"
    assert counts["sources"]["sg"]["repaired"] == 2


# --------------------------------------------------------------------------- other formats


def test_ultrachat_data_lists_and_messages_parquet(tmp_path):
    data = tmp_path / "ultrachat.jsonl"
    write_jsonl(
        data,
        [
            {"id": "0", "data": ["Q1", "A1", "Q2", "A2"]},
            {"id": "1", "data": ["Q", "A"]},
            {"id": "2", "data": ["Q", 3]},
            {"id": "3", "data": ["Q", "  "]},
            {"id": "4", "data": []},
        ],
    )
    msgs = tmp_path / "ultrachat_200k.parquet"
    rows = [
        {
            "prompt": "Q",
            "prompt_id": "p0",
            "messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
        },
        {
            "prompt": "Q",
            "prompt_id": "p1",
            "messages": [{"role": "assistant", "content": "A"}, {"role": "user", "content": "Q"}],
        },
    ]
    pq.write_table(pa.Table.from_pylist(rows), msgs)
    counts, pool, rejects, _ = build(
        tmp_path,
        [
            {"name": "uc", "path_or_hub_id": str(data), "format": "ultrachat"},
            {"name": "uc200k", "path_or_hub_id": str(msgs), "format": "ultrachat"},
        ],
    )
    recs = by_id(pool)
    assert recs["uc:0"]["conversations"] == [h("Q1"), g("A1"), h("Q2"), g("A2")]
    assert recs["uc200k:p0"]["conversations"] == [h("Q"), g("A")] and recs["uc200k:p0"]["prompt"] == "Q"
    assert "prompt_id" not in recs["uc200k:p0"]
    rej = reasons(rejects)
    assert rej["uc:2"]["field"] == "data[1]" and rej["uc:2"]["reason"] == "turn must be a string, got int"
    assert rej["uc:3"]["field"] == "data[1]" and rej["uc:3"]["reason"].startswith("empty value")
    assert rej["uc:4"]["field"] == "data" and rej["uc:4"]["reason"].startswith("empty conversation")
    assert rej["uc200k:p1"]["field"] == "messages[0].role"
    assert counts["sources"]["uc"]["kept"] == 2 and counts["sources"]["uc200k"]["kept"] == 1


def test_wizardlm_v2_conversations_and_70k_instruction_output(tmp_path):
    v2 = tmp_path / "wizard_v2.json"
    write_json(
        v2, [{"idx": "NRv1", "conversations": [h("Q"), g("A")]}, {"idx": "NRv2", "conversations": [h("Q2"), g("A2")]}]
    )
    v70k = tmp_path / "wizard_70k.jsonl"
    write_jsonl(
        v70k,
        [{"instruction": "Do X", "output": "Done"}, {"instruction": "Do Y"}, {"instruction": "Do Z", "output": "Z"}],
    )
    counts, pool, rejects, _ = build(
        tmp_path,
        [
            {"name": "wiz", "path_or_hub_id": str(v2), "format": "wizardlm"},
            {"name": "wiz70k", "path_or_hub_id": str(v70k), "format": "wizardlm"},
        ],
    )
    recs = by_id(pool)
    assert recs["wiz:NRv1"]["conversations"] == [h("Q"), g("A")] and "idx" not in recs["wiz:NRv1"]
    assert recs["wiz70k:0"]["conversations"] == [h("Do X"), g("Done")]
    assert "wiz70k:2" in recs and "instruction" not in recs["wiz70k:2"]
    assert rejects == [
        {
            "source": "wiz70k",
            "index": 1,
            "line": 2,
            "id": "wiz70k:1",
            "field": "output",
            "reason": "missing 'output'",
            "record": {"instruction": "Do Y"},
        }
    ]
    assert counts["sources"]["wiz70k"]["ids_from_index"] == 2


def test_alpaca_instruction_input_join_and_field_names(tmp_path):
    path = tmp_path / "alpaca.json"
    write_json(
        path,
        [
            {"instruction": "Translate.", "input": "Bonjour", "output": "Hello"},
            {"instruction": "Say hi.", "input": "", "output": "Hi"},
            {"instruction": "Say hi.", "input": "  ", "output": "Hi!"},
            {"instruction": "Sum.", "input": None, "output": "2"},
            {"instruction": "", "input": "", "output": "x"},
            {"instruction": "Q", "input": 5, "output": "x"},
            {"instruction": "Q", "input": "", "output": ""},
        ],
    )
    counts, pool, rejects, _ = build(tmp_path, [{"name": "al", "path_or_hub_id": str(path), "format": "alpaca"}])
    recs = by_id(pool)
    assert recs["al:0"]["conversations"] == [h("Translate.\n\nBonjour"), g("Hello")]
    assert recs["al:1"]["conversations"][0]["value"] == "Say hi."
    assert recs["al:2"]["conversations"][0]["value"] == "Say hi."  # a blank input adds nothing
    assert recs["al:3"]["conversations"][0]["value"] == "Sum."
    assert alpaca_query("I", "x") == "I\n\nx" and alpaca_query("I", None) == "I"
    rej = reasons(rejects)
    assert rej["al:4"]["field"] == "instruction"
    assert rej["al:5"]["field"] == "input"
    assert rej["al:6"]["field"] == "output"
    assert counts["sources"]["al"]["kept"] == 4


def test_messages_and_auto_detection_per_record(tmp_path):
    path = tmp_path / "mixed.jsonl"
    write_jsonl(
        path,
        [
            {
                "id": "m",
                "messages": [
                    {"role": "system", "content": "S"},
                    {"role": "user", "content": "Q"},
                    {"role": "assistant", "content": "A"},
                ],
            },
            {"id": "s", "conversations": [h("Q"), g("A")]},
            {"id": "u", "data": ["Q", "A"]},
            {"id": "a", "instruction": "I", "output": "O"},
            {"id": "x", "text": "plain text is not a conversation"},
        ],
    )
    counts, pool, rejects, _ = build(tmp_path, [{"name": "mix", "path_or_hub_id": str(path)}])
    recs = by_id(pool)
    assert recs["mix:m"]["conversations"] == [{"from": "system", "value": "S"}, h("Q"), g("A")]
    assert counts["sources"]["mix"]["formats"] == {"messages": 1, "sharegpt": 1, "ultrachat": 1, "alpaca": 1}
    assert [r["id"] for r in rejects] == ["mix:x"] and "cannot tell the format" in rejects[0]["reason"]
    assert detect_format({"data": ["q"]}) == "ultrachat" and detect_format({"instruction": "q"}) == "alpaca"


def test_bad_jsonl_line_and_non_object_record_are_rejected_with_line_numbers(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps({"id": "ok", "conversations": [h("Q"), g("A")]}) + '\n{"id": "cut", "conv\n[1, 2]\n')
    counts, pool, rejects, _ = build(tmp_path, [{"name": "b", "path_or_hub_id": str(path)}])
    assert [r["id"] for r in pool] == ["b:ok"]
    assert rejects[0]["line"] == 2 and "JSON" in rejects[0]["reason"]
    assert rejects[1]["line"] == 3 and rejects[1]["reason"] == "record must be a JSON object, got list"
    assert counts["sources"]["b"]["in"] == 3


# --------------------------------------------------------------------------- ids, dedup, sampling


def test_dedup_keeps_first_occurrence_across_sources_and_lists_copies(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.json"
    write_jsonl(a, [{"id": "1", "conversations": [h("Q"), g("A")]}, {"id": "2", "conversations": [h("Q"), g("A")]}])
    write_json(b, [{"instruction": "Q", "output": "A"}, {"instruction": "Q", "output": "B"}])
    sources = [{"name": "a", "path_or_hub_id": str(a)}, {"name": "b", "path_or_hub_id": str(b), "format": "alpaca"}]
    counts, pool, rejects, _ = build(tmp_path, sources, dedup=True)
    assert [r["id"] for r in pool] == ["a:1", "b:1"]
    assert [(r["id"], r["reason"]) for r in rejects] == [("a:2", "duplicate of a:1"), ("b:0", "duplicate of a:1")]
    assert counts["sources"]["a"]["duplicates"] == 1 and counts["sources"]["b"]["duplicates"] == 1
    assert counts["duplicates"] == 2 and counts["in"] == counts["kept"] + counts["rejected"] + counts["duplicates"]

    counts, pool, rejects, _ = build(tmp_path, sources, dedup=False)
    assert len(pool) == 4 and rejects == []
    assert counts["sources"]["a"]["duplicates_kept"] == 1 and counts["duplicates"] == 0


def test_ids_stable_across_runs_sampling_keeps_source_indices(tmp_path):
    path = tmp_path / "alpaca.jsonl"
    write_jsonl(path, [{"instruction": f"Task {i}", "output": f"Answer {i}"} for i in range(50)])
    src = {"name": "al", "path_or_hub_id": str(path), "sample_size": 10, "sample_seed": 7}
    _, pool1, _, _ = build(tmp_path, [src])
    _, pool2, _, _ = build(tmp_path, [src])
    ids = [r["id"] for r in pool1]
    assert ids == [r["id"] for r in pool2] and len(ids) == 10
    indices = [int(i.split(":")[1]) for i in ids]
    assert indices == sorted(indices)  # source order kept
    assert all(r["conversations"][0]["value"] == f"Task {int(r['id'].split(':')[1])}" for r in pool1)
    counts, pool3, _, _ = build(tmp_path, [{**src, "sample_seed": 8}])
    assert [r["id"] for r in pool3] != ids
    assert counts["sources"]["al"]["available"] == 50 and counts["sources"]["al"]["in"] == 10

    counts, pool4, _, _ = build(tmp_path, [{"name": "al", "path_or_hub_id": str(path), "max_records": 5}])
    assert [r["id"] for r in pool4] == [f"al:{i}" for i in range(5)]


def test_missing_id_content_hash_and_duplicate_ids(tmp_path):
    path = tmp_path / "x.jsonl"
    write_jsonl(
        path,
        [
            {"instruction": "A", "output": "1"},
            {"instruction": "B", "output": "2"},
            {"instruction": "A", "output": "1"},
        ],
    )
    counts, pool, rejects, _ = build(tmp_path, [{"name": "c", "path_or_hub_id": str(path), "missing_id": "content"}])
    assert [r["id"].startswith("c:sha1-") for r in pool] == [True, True]
    assert rejects[0]["index"] == 2 and rejects[0]["reason"] == "duplicate id: already used by record 0"
    assert counts["sources"]["c"]["ids_from_content"] == 2

    dup = tmp_path / "dup.jsonl"
    write_jsonl(dup, [{"id": 7, "conversations": [h("Q"), g("A")]}, {"id": "7", "conversations": [h("Q2"), g("A2")]}])
    counts, pool, rejects, _ = build(tmp_path, [{"name": "d", "path_or_hub_id": str(dup)}])
    assert [r["id"] for r in pool] == ["d:7"] and rejects[0]["field"] == "id"
    assert counts["sources"]["d"]["rejected_by_reason"] == {"duplicate id: already used by record N": 1}


def test_max_chars_and_keep_extra_fields(tmp_path):
    path = tmp_path / "x.jsonl"
    write_jsonl(
        path,
        [
            {"id": "s", "conversations": [h("Q"), g("A")], "lang": "en"},
            {"id": "l", "conversations": [h("Q" * 50), g("A")]},
        ],
    )
    counts, pool, rejects, _ = build(
        tmp_path, [{"name": "x", "path_or_hub_id": str(path)}], max_chars=20, keep_extra_fields=False
    )
    assert pool == [{"id": "x:s", "conversations": [h("Q"), g("A")], "source": "x"}]
    assert rejects[0]["id"] == "x:l" and "max_chars" in rejects[0]["reason"]
    assert counts["sources"]["x"]["rejected_by_reason"] == {
        "conversation has N characters, over the max_chars limit of N": 1
    }
    assert reason_key("empty value (vicuna_v1.1 cannot render an empty turn)").endswith(
        "(vicuna_v1.1 cannot render an empty turn)"
    )


def test_pool_output_loads_strictly_with_the_shared_loader(tmp_path):
    out = tmp_path / "tiny"
    (config,) = parse_config(
        PoolConfig, args=["--config", str(REPO / "recipes/data/tiny-pool.yaml"), "--output_dir", str(out)]
    )
    counts = build_pool(config)
    records = load_conversations(out / "pool.jsonl")  # strict: raises on any invalid record
    assert len(records) == counts["kept"] > 0
    assert {r["source"] for r in records} == {"sharegpt", "ultrachat", "wizardlm", "alpaca", "messages"}
    for name, c in counts["sources"].items():
        assert c["in"] == len(demo_records(name)) == c["kept"] + c["rejected"] + c["duplicates"]
    assert counts["sources"]["sharegpt"]["repaired"] == 1 and counts["duplicates"] == 1
    assert len(read_jsonl(out / "rejects.jsonl")) == counts["rejected"] + counts["duplicates"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["inputs"]) == 5 and manifest["config"]["sources"][0]["name"] == "sharegpt"


# --------------------------------------------------------------------------- config and loading


@pytest.mark.parametrize("recipe", ["x_sota.yaml", "deita_sota_pool.yaml", "tiny-pool.yaml"])
def test_shipped_recipes_parse(recipe):
    (cfg,) = parse_config(PoolConfig, args=["--config", str(REPO / "recipes" / "data" / recipe)])
    specs = cfg.source_specs()
    if recipe == "x_sota.yaml":
        assert [s.name for s in specs] == ["sharegpt", "ultrachat", "wizardlm"] and cfg.dedup
        assert sum(s.sample_size or 143_000 for s in specs) > 300_000


def test_config_from_yaml_and_json_sources_on_the_command_line(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("output_dir: o\nsources:\n  - {name: a, path_or_hub_id: a.json, format: sharegpt}\n")
    (cfg,) = parse_config(PoolConfig, args=["--config", str(recipe), "--dedup", "true"])
    assert cfg.dedup is True and cfg.source_specs()[0].format == "sharegpt"
    (cfg,) = parse_config(PoolConfig, args=["--sources", '[{"name": "b", "path_or_hub_id": "x/y", "max_records": 3}]'])
    assert cfg.source_specs()[0].max_records == 3

    with pytest.raises(ValueError, match="unknown keys \\['formt'\\]"):
        PoolConfig(sources=[{"name": "a", "path_or_hub_id": "p", "formt": "sharegpt"}])
    with pytest.raises(ValueError, match="names must be unique"):
        PoolConfig(sources=[{"name": "a", "path_or_hub_id": "p"}, {"name": "a", "path_or_hub_id": "q"}])
    with pytest.raises(ValueError, match="format must be one of"):
        PoolConfig(sources=[{"name": "a", "path_or_hub_id": "p", "format": "csv"}])
    with pytest.raises(ValueError, match="repair must be one of"):
        PoolConfig(sources=[{"name": "a", "path_or_hub_id": "p", "repair": "merge"}])
    with pytest.raises(ValueError, match="non-empty list"):
        PoolConfig(sources=[])
    with pytest.raises(ValueError, match="dedupe"):
        parse_config(PoolConfig, args=["--config", str(recipe), "--dedupe", "true"])
    recipe.write_text("dedupe: true\nsources: [{name: a, path_or_hub_id: a.json}]\n")
    with pytest.raises(ValueError, match="dedupe"):
        parse_config(PoolConfig, args=["--config", str(recipe)])


def test_missing_local_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="source 'x'.*does not exist"):
        build_pool(
            PoolConfig(
                sources=[{"name": "x", "path_or_hub_id": str(tmp_path / "nope.jsonl")}], output_dir=str(tmp_path / "o")
            )
        )
    assert not (tmp_path / "o" / "pool.jsonl").exists() and not list((tmp_path / "o").glob("*.tmp"))


def test_hub_sources_go_through_load_dataset_with_every_option(tmp_path, monkeypatch):
    import datasets

    calls = []
    rows = [{"idx": f"r{i}", "conversations": [h(f"Q{i}"), g(f"A{i}")]} for i in range(20)]

    def fake_load_dataset(path, **kwargs):
        calls.append((path, kwargs))
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    src = {
        "name": "hub",
        "path_or_hub_id": "someone/some_pool",
        "split": "train",
        "data_files": "part.json",
        "revision": "abc123",
        "subset": "default",
        "sample_size": 5,
        "format": "wizardlm",
    }
    counts, pool, _, manifest = build(tmp_path, [src])
    assert calls == [
        (
            "someone/some_pool",
            {"name": "default", "split": "train", "data_files": "part.json", "revision": "abc123", "streaming": False},
        )
    ]
    assert len(pool) == 5 and all(r["id"] == f"hub:r{int(r['id'][5:])}" for r in pool)
    assert all(r["conversations"][0]["value"] == f"Q{r['id'][5:]}" for r in pool)
    assert counts["sources"]["hub"]["available"] == 20
    assert manifest["hub_sources"] == [
        {"name": "hub", "id": "someone/some_pool", "revision": "abc123", "data_files": "part.json"}
    ]


def test_normalise_record_reports_raw_fields():
    n = normalise_record({"data": ["q", "a"]}, "ultrachat")
    assert n.record == {"conversations": [h("q"), g("a")]} and n.turn_fields == ["data[0]", "data[1]"]
    with pytest.raises(ValueError, match="'messages'"):
        normalise_record({"conversations": []}, "messages")


def test_real_sharegpt_file_builds_and_accounts_for_every_record(tmp_path, shared_data):
    path = shared_data / "sharegpt" / "dummy_conversation.json"
    if not path.exists():
        pytest.skip(f"{path} not present")
    n = len(json.loads(path.read_text()))
    counts, pool, rejects, _ = build(
        tmp_path, [{"name": "sharegpt", "path_or_hub_id": str(path), "format": "sharegpt"}], dedup=True
    )
    c = counts["sources"]["sharegpt"]
    assert c["in"] == n == c["kept"] + c["rejected"] + c["duplicates"]
    assert c["kept"] > 0.9 * n
    assert all(r["id"].startswith("sharegpt:") for r in pool)
    assert len(rejects) == c["rejected"] + c["duplicates"]
