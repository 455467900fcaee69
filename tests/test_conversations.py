"""The conversation data layer: every source format, every kind of bad input, counts that add up."""

import json

import pytest

from deita_train.conversations import (
    ConversationError,
    derive_id,
    load_conversations,
    load_conversations_with_report,
    turn_pairs,
)
from deita_train.jsonl import read_jsonl


GOOD = {
    "id": "a",
    "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}],
    "source": "unit",
}


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _conv(*pairs):
    return [{"from": r, "value": v} for r, v in pairs]


def test_loads_json_jsonl_parquet_and_saved_dataset(tmp_path):
    import datasets

    recs = [GOOD, {**GOOD, "id": "b"}]
    (tmp_path / "a.json").write_text(json.dumps(recs))
    _jsonl(tmp_path / "a.jsonl", recs)
    ds = datasets.Dataset.from_list(recs)
    ds.to_parquet(str(tmp_path / "a.parquet"))
    ds.save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "saved_dict"))
    for src, split in [
        ("a.json", None),
        ("a.jsonl", None),
        ("a.parquet", None),
        ("saved", None),
        ("saved_dict", "train"),
    ]:
        out = load_conversations(tmp_path / src, split=split)
        assert [r["id"] for r in out] == ["a", "b"], src
        assert out[0]["conversations"] == GOOD["conversations"]
        assert out[0]["source"] == "unit", "extra keys are carried through"
    with pytest.raises(ConversationError, match="pass split="):
        load_conversations(tmp_path / "saved_dict")


def test_hub_dataset_id_goes_through_load_dataset(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, split=None):
        calls.append((name, split))
        return datasets.Dataset.from_list([GOOD])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert load_conversations("org/some-pool", split="train_sft")[0]["id"] == "a"
    assert calls == [("org/some-pool", "train_sft")]


def test_messages_form_is_converted(tmp_path):
    rec = {
        "id": "m1",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
        ],
    }
    out, report = load_conversations_with_report(_jsonl(tmp_path / "m.jsonl", [rec]))
    assert out[0]["conversations"] == _conv(("system", "Be brief."), ("human", "Hi"), ("gpt", "Hello"))
    assert "messages" not in out[0]
    assert report.n_converted_from_messages == 1


def test_missing_ids_are_derived_stably_and_reported(tmp_path, caplog):
    rec = {"conversations": GOOD["conversations"]}
    out, report = load_conversations_with_report(_jsonl(tmp_path / "x.jsonl", [rec]))
    assert out[0]["id"] == derive_id(GOOD["conversations"])
    assert out[0]["id"] == load_conversations(tmp_path / "x.jsonl")[0]["id"], "stable across loads"
    assert report.n_ids_derived == 1
    assert "derived stable ids" in caplog.text


def test_bom_and_crlf_are_accepted(tmp_path):
    p = tmp_path / "bom.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + (json.dumps(GOOD) + "\r\n" + json.dumps({**GOOD, "id": "b"}) + "\r\n").encode())
    assert [r["id"] for r in load_conversations(p)] == ["a", "b"]
    q = tmp_path / "bom.json"
    q.write_bytes(b"\xef\xbb\xbf" + json.dumps([GOOD]).replace(",", ",\r\n").encode())
    assert load_conversations(q)[0]["id"] == "a"


def test_jsonl_saved_as_json_is_read_as_jsonl(tmp_path):
    p = _jsonl(tmp_path / "lines.json", [GOOD, {**GOOD, "id": "b"}])
    assert len(load_conversations(p)) == 2


BAD_RECORDS = [
    # (name, record, field, message fragment)
    ("missing conversations", {"id": "x", "text": "hi"}, "conversations", "no 'conversations'"),
    ("conversations not a list", {"id": "x", "conversations": "Hi"}, "conversations", "must be a list"),
    ("empty conversation", {"id": "x", "conversations": []}, "conversations", "empty conversation"),
    (
        "unknown role",
        {"id": "x", "conversations": _conv(("human", "a"), ("bot", "b"))},
        "conversations[1].from",
        "unknown role 'bot'",
    ),
    (
        "two human turns in a row",
        {"id": "x", "conversations": _conv(("human", "a"), ("human", "b"))},
        "conversations[1].from",
        "two 'human' turns in a row",
    ),
    (
        "leading gpt turn",
        {"id": "x", "conversations": _conv(("gpt", "a"), ("human", "b"))},
        "conversations[0].from",
        "must start with a human turn",
    ),
    (
        "non-string value",
        {"id": "x", "conversations": [{"from": "human", "value": 3}]},
        "conversations[0].value",
        "must be a string, got int",
    ),
    (
        "empty value",
        {"id": "x", "conversations": _conv(("human", "a"), ("gpt", "  "))},
        "conversations[1].value",
        "empty value",
    ),
    (
        "system turn in the middle",
        {"id": "x", "conversations": _conv(("human", "a"), ("system", "b"))},
        "conversations[1].from",
        "system turn is only allowed first",
    ),
    ("record not an object", ["human", "hi"], None, "must be a JSON object"),
    ("bad id type", {"id": [1], "conversations": GOOD["conversations"]}, "id", "id must be a string"),
    (
        "messages with unknown role",
        {"id": "x", "messages": [{"role": "tool", "content": "a"}]},
        "messages[0].role",
        "unknown role 'tool'",
    ),
    ("turn not an object", {"id": "x", "conversations": ["hello"]}, "conversations[0]", "turn must be an object"),
    (
        "only a system turn",
        {"id": "x", "conversations": _conv(("system", "s"))},
        "conversations",
        "system turn and nothing else",
    ),
]


@pytest.mark.parametrize("name,record,field,fragment", BAD_RECORDS, ids=[b[0] for b in BAD_RECORDS])
def test_strict_mode_names_source_record_id_and_field(tmp_path, name, record, field, fragment):
    p = _jsonl(tmp_path / "bad.jsonl", [GOOD, record])
    with pytest.raises(ConversationError) as info:
        load_conversations(p)
    e = info.value
    msg = str(e)
    assert fragment in msg, msg
    assert str(p) in msg and "record 1 (line 2)" in msg
    assert e.index == 1 and e.field == field
    if isinstance(record, dict) and isinstance(record.get("id"), str):
        assert "id='x'" in msg


@pytest.mark.parametrize("name,record,field,fragment", BAD_RECORDS, ids=[b[0] for b in BAD_RECORDS])
def test_lenient_mode_rejects_with_reason_and_counts_add_up(tmp_path, name, record, field, fragment):
    p = _jsonl(tmp_path / "bad.jsonl", [GOOD, record, {**GOOD, "id": "c"}])
    rej = tmp_path / "rejects.jsonl"
    out, report = load_conversations_with_report(p, strict=False, rejects_path=rej)
    assert [r["id"] for r in out] == ["a", "c"]
    assert (report.n_in, report.n_kept, report.n_rejected) == (3, 2, 1)
    (r,) = read_jsonl(rej)
    assert r["index"] == 1 and r["field"] == field and fragment in r["reason"]
    assert r["record"] == record, "the raw record is kept for inspection"


def test_empty_file(tmp_path):
    for name in ("empty.jsonl", "empty.json"):
        p = tmp_path / name
        p.write_text("\n  \n")
        with pytest.raises(ConversationError, match="file is empty: no records"):
            load_conversations(p, strict=False)


def test_not_json_at_all(tmp_path):
    p = tmp_path / "garbage.json"
    p.write_text("this is not json {")
    with pytest.raises(ConversationError, match=r"garbage.json: not valid JSON at line 1 column 1"):
        load_conversations(p)


def test_json_that_is_not_a_list_of_records(tmp_path):
    p = tmp_path / "obj.json"
    p.write_text(json.dumps({"a": 1, "b": 2}))
    with pytest.raises(ConversationError, match="expected a JSON array"):
        load_conversations(p)


def test_truncated_last_line(tmp_path):
    p = tmp_path / "cut.jsonl"
    p.write_text(json.dumps(GOOD) + "\n" + json.dumps({**GOOD, "id": "b"})[:25])
    with pytest.raises(ConversationError, match=r"record 1 \(line 2\): truncated JSON line"):
        load_conversations(p)
    out, report = load_conversations_with_report(p, strict=False)
    assert len(out) == 1 and report.n_rejected == 1 and report.rejects[0]["line"] == 2


def test_not_json_line_in_the_middle(tmp_path):
    p = tmp_path / "mid.jsonl"
    p.write_text(json.dumps(GOOD) + "\nhello world\n" + json.dumps({**GOOD, "id": "b"}) + "\n")
    out, report = load_conversations_with_report(p, strict=False)
    assert [r["id"] for r in out] == ["a", "b"]
    assert report.rejects[0]["reason"].startswith("not valid JSON")


def test_duplicate_ids(tmp_path):
    p = _jsonl(tmp_path / "dup.jsonl", [GOOD, {**GOOD, "source": "other"}])
    with pytest.raises(
        ConversationError, match=r"record 1 \(line 2\), id='a', field 'id': duplicate id: already used by record 0"
    ):
        load_conversations(p)
    out, report = load_conversations_with_report(p, strict=False)
    assert len(out) == 1 and report.n_rejected == 1


def test_identical_content_without_ids_is_a_duplicate(tmp_path):
    rec = {"conversations": GOOD["conversations"]}
    out, report = load_conversations_with_report(_jsonl(tmp_path / "d.jsonl", [rec, rec]), strict=False)
    assert len(out) == 1 and "identical content" in report.rejects[0]["reason"]


def test_huge_record(tmp_path):
    big = {"id": "big", "conversations": _conv(("human", "x" * 5000), ("gpt", "y" * 5000))}
    p = _jsonl(tmp_path / "big.jsonl", [GOOD, big])
    with pytest.raises(ConversationError, match="10000 characters, over the max_chars limit of 8000"):
        load_conversations(p, max_chars=8000)
    assert len(load_conversations(p)) == 2, "the default limit admits real long dialogues"
    _, report = load_conversations_with_report(p, strict=False, max_chars=8000)
    assert report.rejects[0]["id"] == "big"


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(ConversationError, match="file not found"):
        load_conversations(tmp_path / "nope.jsonl")
    (tmp_path / "a.csv").write_text("a,b")
    with pytest.raises(ConversationError, match="unsupported file type '.csv'"):
        load_conversations(tmp_path / "a.csv")


def test_trailing_human_turn_is_valid_and_pairs_with_empty_response():
    rec = {"conversations": _conv(("system", "s"), ("human", "q1"), ("gpt", "a1"), ("human", "q2"))}
    assert turn_pairs(rec) == [("q1", "a1"), ("q2", "")]


def test_real_sharegpt_sample_loads(shared_data):
    recs = load_conversations(shared_data / "sharegpt" / "dummy_conversation.json")
    assert len(recs) == 500
    assert {len(r["conversations"]) for r in recs} <= {2, 4, 6}


def test_not_utf8(tmp_path):
    p = tmp_path / "latin1.jsonl"
    p.write_bytes(
        (json.dumps(GOOD) + "\n").encode() + b'{"id": "b", "conversations": [{"from": "human", "value": "caf\xe9"}]}\n'
    )
    with pytest.raises(ConversationError, match=r"record 1 \(line 2\): not UTF-8 text \(byte 0xe9 at line 2\)"):
        load_conversations(p)
    out, report = load_conversations_with_report(p, strict=False)
    assert [r["id"] for r in out] == ["a"] and report.rejects[0]["line"] == 2
    q = tmp_path / "latin1.json"
    q.write_bytes(b'[\n{"id": "a", "conversations": [{"from": "human", "value": "caf\xe9"}]}]')
    with pytest.raises(ConversationError, match=r"latin1.json: not UTF-8 text \(byte 0xe9 at line 2\)"):
        load_conversations(q)


def test_empty_json_array_is_no_records(tmp_path):
    for body in ("[]", '{"data": []}'):
        p = tmp_path / "empty.json"
        p.write_text(body)
        with pytest.raises(ConversationError, match="no records"):
            load_conversations(p, strict=False)
