"""The conversation data layer: load ShareGPT-style records from anywhere, validate them, account for all.

Record schema (DESIGN.md): ``{"id": str, "conversations": [{"from": "system"|"human"|"gpt", "value": str}, ...]}``
with extra keys carried through untouched. Turns alternate human/gpt after an optional leading
system turn. The ``messages`` form (``role``/``content`` with user/assistant/system) is converted
on load.

Two modes:

* strict (default): the first bad record raises `ConversationError`, naming the source, the record
  index (and line for JSONL), the record id and the field.
* lenient (``strict=False``): bad records are written to a rejects file with the reason, and the
  `LoadReport` counts satisfy ``n_in == n_kept + n_rejected``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deita_train.jsonl import write_jsonl


logger = logging.getLogger(__name__)

ROLES = ("system", "human", "gpt")
MESSAGE_ROLES = {"system": "system", "user": "human", "assistant": "gpt"}
DEFAULT_MAX_CHARS = 2_000_000  # one conversation; far above real ShareGPT dialogues, far below a memory problem


class ConversationError(ValueError):
    """A record that is not a valid conversation: says where (source, index, line), which id and field, and why."""

    def __init__(
        self,
        reason: str,
        *,
        source: str,
        index: int | None = None,
        record_id: str | None = None,
        field: str | None = None,
        line: int | None = None,
    ) -> None:
        self.reason, self.source, self.index, self.record_id, self.field, self.line = (
            reason,
            source,
            index,
            record_id,
            field,
            line,
        )
        where = [str(source)]
        if index is not None:
            where.append(f"record {index}" + (f" (line {line})" if line is not None else ""))
        if record_id is not None:
            where.append(f"id={record_id!r}")
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(": ".join([", ".join(where), reason]))

    def as_reject(self, raw: Any = None) -> dict[str, Any]:
        rej = {
            "source": self.source,
            "index": self.index,
            "line": self.line,
            "id": self.record_id,
            "field": self.field,
            "reason": self.reason,
        }
        if raw is not None:
            rej["record"] = raw if len(json.dumps(raw, default=str)) <= 10_000 else "<omitted: record too large>"
        return rej


@dataclass
class LoadReport:
    """Counts for one load: every input record is either kept or rejected with a reason."""

    source: str
    n_in: int = 0
    n_kept: int = 0
    n_rejected: int = 0
    n_ids_derived: int = 0
    n_converted_from_messages: int = 0
    rejects: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "rejects"}


def derive_id(conversations: list[dict[str, Any]]) -> str:
    """A stable id from the conversation content (same text, same id; any edit, a new id)."""
    canon = json.dumps([[t.get("from"), t.get("value")] for t in conversations], ensure_ascii=False)
    return "sha1-" + hashlib.sha1(canon.encode("utf-8")).hexdigest()[:16]


def _converted_turns(record: dict[str, Any], err: Any) -> tuple[list[Any], str, bool]:
    """The raw turn list and the field name it came from; `messages` turns are mapped to ShareGPT roles."""
    if "conversations" in record:
        turns, key = record["conversations"], "conversations"
    elif "messages" in record:
        turns, key = record["messages"], "messages"
    else:
        raise err("no 'conversations' (or 'messages') field", "conversations")
    if not isinstance(turns, list):
        raise err(f"must be a list of turns, got {type(turns).__name__}", key)
    if not turns:
        raise err("empty conversation: no turns", key)
    out, converted = [], False
    for i, t in enumerate(turns):
        if not isinstance(t, dict):
            raise err(f"turn must be an object, got {type(t).__name__}", f"{key}[{i}]")
        if "from" in t or "value" in t:
            role, value, rk, vk = t.get("from"), t.get("value"), "from", "value"
            if not isinstance(role, str) or role not in ROLES:
                raise err(f"unknown role {role!r}; expected one of {list(ROLES)}", f"{key}[{i}].from")
        elif "role" in t or "content" in t:
            converted = True
            role, value, rk, vk = t.get("role"), t.get("content"), "role", "content"
            if not isinstance(role, str) or role not in MESSAGE_ROLES:
                raise err(f"unknown role {role!r}; expected one of {list(MESSAGE_ROLES)}", f"{key}[{i}].role")
            role = MESSAGE_ROLES[role]
        else:
            raise err("turn has neither from/value nor role/content", f"{key}[{i}]")
        if not isinstance(value, str):
            raise err(f"value must be a string, got {type(value).__name__}", f"{key}[{i}].{vk}")
        if not value.strip():
            raise err("empty value (vicuna_v1.1 cannot render an empty turn)", f"{key}[{i}].{vk}")
        extra = {k: v for k, v in t.items() if k not in (rk, vk)}
        out.append({"from": role, "value": value, **extra})
    return out, key, converted


def _check_alternation(turns: list[dict[str, Any]], key: str, err: Any, role_key: str = "from") -> None:
    start = 1 if turns[0]["from"] == "system" else 0
    if start == 1 and len(turns) == 1:
        raise err("conversation has a system turn and nothing else", key)
    for i in range(start, len(turns)):
        expected = "human" if (i - start) % 2 == 0 else "gpt"
        if turns[i]["from"] != expected:
            if i == start:
                why = f"conversation must start with a human turn (after an optional system turn), got {turns[i]['from']!r}"
            elif turns[i]["from"] == "system":
                why = "a system turn is only allowed first"
            else:
                why = f"turns must alternate human/gpt: two {turns[i]['from']!r} turns in a row"
            raise err(why, f"{key}[{i}].{role_key}")


def validate_record(
    record: Any,
    *,
    source: str = "<records>",
    index: int | None = None,
    line: int | None = None,
    max_chars: int | None = DEFAULT_MAX_CHARS,
) -> tuple[dict[str, Any], bool, bool]:
    """Validate one record and return (normalised record, id_was_derived, converted_from_messages).

    Raises `ConversationError` naming the record and the field on the first problem found.
    """
    rid = record.get("id") if isinstance(record, dict) else None
    rid_str = str(rid) if isinstance(rid, (str, int)) and not isinstance(rid, bool) else None

    def err(reason: str, fld: str | None = None) -> ConversationError:
        return ConversationError(reason, source=source, index=index, record_id=rid_str, field=fld, line=line)

    if not isinstance(record, dict):
        raise err(f"record must be a JSON object, got {type(record).__name__}")
    if rid is not None and rid_str is None:
        raise err(f"id must be a string or integer, got {type(rid).__name__}", "id")
    if rid_str is not None and not rid_str.strip():
        raise err("id is empty", "id")
    turns, key, converted = _converted_turns(record, err)
    _check_alternation(turns, key, err, "role" if key == "messages" else "from")
    n_chars = sum(len(t["value"]) for t in turns)
    if max_chars is not None and n_chars > max_chars:
        raise err(f"conversation has {n_chars} characters, over the max_chars limit of {max_chars}", key)
    out = {k: v for k, v in record.items() if k not in ("conversations", "messages", "id")}
    derived = rid_str is None
    out = {"id": derive_id(turns) if derived else rid_str, "conversations": turns, **out}
    return out, derived, converted


def _not_utf8(path: Path, data: bytes, err: UnicodeDecodeError, line: int | None = None) -> ConversationError:
    line = line if line is not None else data.count(b"\n", 0, err.start) + 1
    return ConversationError(
        f"not UTF-8 text (byte 0x{data[err.start]:02x} at line {line}); re-encode the file as UTF-8", source=str(path)
    )


def _iter_json_file(path: Path) -> Iterator[tuple[int | None, Any, ConversationError | None]]:
    data_bytes = path.read_bytes()
    try:
        text = data_bytes.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise _not_utf8(path, data_bytes, e) from e
    if not text.strip():
        raise ConversationError("file is empty: no records", source=str(path))
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # JSON Lines saved with a .json name: read it as such, like the original
            yield from _iter_jsonl_file(path)
            return
        raise ConversationError(
            f"not valid JSON at line {e.lineno} column {e.colno}: {e.msg}", source=str(path)
        ) from e
    if isinstance(data, dict):
        data = next((v for v in data.values() if isinstance(v, list)), None) if len(data) == 1 else None
    if not isinstance(data, list):
        raise ConversationError("expected a JSON array of records (or JSON Lines)", source=str(path))
    if not data:
        raise ConversationError("no records: the JSON array is empty", source=str(path))
    for rec in data:
        yield None, rec, None


def _iter_jsonl_file(path: Path) -> Iterator[tuple[int | None, Any, ConversationError | None]]:
    """Records line by line; a line that is not UTF-8 or not JSON is that line's error, not the file's."""
    seen_any = False
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                seen_any = True
                yield lineno, raw[:200].decode("utf-8", "replace"), _not_utf8(path, raw, e, lineno)
                continue
            if not line.strip():
                continue
            seen_any = True
            try:
                yield lineno, json.loads(line), None
            except json.JSONDecodeError as e:
                body = line.strip()
                cut_short = body[:1] in "{[" and (e.pos >= len(body) - 1 or e.msg.startswith("Unterminated"))
                why = "truncated JSON line" if cut_short else "not valid JSON"
                msg = e.msg.removesuffix(" at")  # some messages already end in "at"
                yield lineno, line[:200], ConversationError(f"{why} ({msg} at column {e.colno})", source=str(path))
    if not seen_any:
        raise ConversationError("file is empty: no records", source=str(path))


def _iter_dataset(ds: Any) -> Iterator[tuple[int | None, Any, ConversationError | None]]:
    for rec in ds:
        yield None, dict(rec), None


def iter_source(
    source: str | Path, split: str | None = None
) -> Iterator[tuple[int | None, Any, ConversationError | None]]:
    """Raw records of a source, unvalidated: (JSONL line or None, record, parse error or None) each."""
    path = Path(source)
    if path.is_dir():
        import datasets

        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if split is None:
                if len(ds) != 1:
                    raise ConversationError(f"saved DatasetDict has splits {list(ds)}; pass split=", source=str(path))
                split = next(iter(ds))
            ds = ds[split]
        return _iter_dataset(ds)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return _iter_dataset(pq.read_table(path).to_pylist())
        if suffix == ".jsonl":
            return _iter_jsonl_file(path)
        if suffix == ".json":
            return _iter_json_file(path)
        raise ConversationError(f"unsupported file type {suffix!r}; use .json, .jsonl or .parquet", source=str(path))
    if path.suffix.lower() in (".json", ".jsonl", ".parquet") or str(source).startswith((".", "/")):
        raise ConversationError("file not found", source=str(path))
    import datasets

    return _iter_dataset(datasets.load_dataset(str(source), split=split or "train"))


def load_conversations_with_report(
    source: str | Path,
    split: str | None = None,
    *,
    strict: bool = True,
    rejects_path: str | Path | None = None,
    max_chars: int | None = DEFAULT_MAX_CHARS,
) -> tuple[list[dict[str, Any]], LoadReport]:
    """Load and validate; returns the kept records and a `LoadReport` (see `load_conversations`)."""
    name = str(source) if split is None else f"{source}[{split}]"
    report = LoadReport(source=name)
    kept: list[dict[str, Any]] = []
    first_index: dict[str, int] = {}
    for index, (line, raw, parse_error) in enumerate(iter_source(source, split)):
        report.n_in += 1
        try:
            if parse_error is not None:
                raise ConversationError(parse_error.reason, source=name, index=index, line=line)
            rec, derived, converted = validate_record(raw, source=name, index=index, line=line, max_chars=max_chars)
            if rec["id"] in first_index:
                what = "identical content to" if derived else "duplicate id: already used by"
                raise ConversationError(
                    f"{what} record {first_index[rec['id']]}",
                    source=name,
                    index=index,
                    record_id=rec["id"],
                    field="id",
                    line=line,
                )
        except ConversationError as e:
            if strict:
                raise
            report.n_rejected += 1
            report.rejects.append(e.as_reject(raw))
            continue
        first_index[rec["id"]] = index
        report.n_ids_derived += derived
        report.n_converted_from_messages += converted
        kept.append(rec)
    report.n_kept = len(kept)
    if report.n_ids_derived:
        logger.warning("%s: %d records had no id; derived stable ids from their content", name, report.n_ids_derived)
    if report.n_rejected:
        logger.warning("%s: rejected %d of %d records", name, report.n_rejected, report.n_in)
    if rejects_path is not None:
        write_jsonl(rejects_path, report.rejects)
    assert report.n_in == report.n_kept + report.n_rejected
    return kept, report


def load_conversations(
    source: str | Path,
    split: str | None = None,
    *,
    strict: bool = True,
    rejects_path: str | Path | None = None,
    max_chars: int | None = DEFAULT_MAX_CHARS,
) -> list[dict[str, Any]]:
    """Load .json / .jsonl / .parquet / a saved dataset dir / a Hub dataset id into validated records.

    Strict (default): the first bad record raises `ConversationError` naming source, record, id and
    field. Lenient: bad records go to `rejects_path` (JSONL, one reason each) and are skipped.
    """
    records, _ = load_conversations_with_report(
        source, split, strict=strict, rejects_path=rejects_path, max_chars=max_chars
    )
    return records


def turn_pairs(record: dict[str, Any]) -> list[tuple[str, str]]:
    """(human, gpt) pairs of a validated record, system turn skipped; a trailing human turn pairs with ''."""
    turns = [t for t in record["conversations"] if t["from"] != "system"]
    return [(turns[i]["value"], turns[i + 1]["value"] if i + 1 < len(turns) else "") for i in range(0, len(turns), 2)]
