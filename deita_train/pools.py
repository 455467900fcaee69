"""Raw instruction pools -> one conversation pool: normalised formats, stable ids, rejects with reasons.

A pool is built from a list of sources (Hub dataset ids or local .json/.jsonl/.parquet files or
saved datasets). Each record is normalised from its source format into the DESIGN.md
conversation schema and then checked by `deita_train.conversations.validate_record`, so the
rules for what a valid conversation is live in one place.

Source formats (``format:``; ``auto`` picks per record, in this order):

* ``sharegpt``: ``conversations`` with ``from``/``value``. Roles ``human``/``user`` -> human;
  ``gpt``/``chatgpt``/``bing``/``bard``/``assistant`` -> gpt; ``system`` -> system (role names are
  matched case-insensitively; nothing else is touched, text is never stripped). Conversations that
  start with a gpt turn or have two same-role turns in a row are rejected, not merged. With
  ``repair: drop_leading_gpt`` the gpt turns before the first human turn are dropped instead (the
  original Deita trainer silently did the same) and the record is counted as repaired.
* ``ultrachat``: ``data``, a list of strings alternating human/gpt (``stingning/ultrachat``), or
  ``messages`` (``HuggingFaceH4/ultrachat_200k``).
* ``wizardlm``: ``conversations`` (``WizardLM_evol_instruct_V2``, treated as ShareGPT) or
  ``instruction``/``output`` (``WizardLM_evol_instruct_70k``).
* ``alpaca``: ``instruction``, optional ``input``, ``output``. The human turn is the instruction,
  followed by a blank line and the input when the input is not blank: ``"{instruction}\\n\\n{input}"``.
* ``messages``: ``messages`` with ``role``/``content`` (user/assistant/system).

Ids are ``"{source name}:{original id}"``, the original id taken from ``id_field`` (default: the
first of ``id``, ``idx``, ``prompt_id`` present). Without one, ``missing_id: index`` (default) uses
the record's index in the source split: stable as long as the source (revision, data_files,
split) is the same, so pin ``revision`` for Hub sources. ``missing_id: content`` uses a hash of the
normalised turns instead, stable under reordering but shared by exact duplicates.

Exact-duplicate removal (``dedup: true``) hashes the normalised turns; the first occurrence (in
source order, sources in recipe order) is kept and each later copy is listed in the rejects as
``duplicate of <id>``. Removing exact duplicates cannot change a Deita selection: a copy has the
same score and embedding (cosine 1 > tau) as the record it copies.

Every record read is accounted for: per source ``in == kept + rejected + duplicates``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from itertools import islice
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from deita_train.conversations import (
    DEFAULT_MAX_CHARS,
    ConversationError,
    derive_id,
    iter_source,
    validate_record,
)
from deita_train.jsonl import write_json, write_jsonl
from deita_train.manifest import write_manifest


logger = logging.getLogger(__name__)

FORMATS = ("auto", "sharegpt", "ultrachat", "wizardlm", "alpaca", "messages")
REPAIRS = ("drop_leading_gpt",)
MISSING_ID = ("index", "content")
ID_FIELDS = ("id", "idx", "prompt_id")
SHAREGPT_ROLES = {
    "human": "human",
    "user": "human",
    "gpt": "gpt",
    "chatgpt": "gpt",
    "bing": "gpt",
    "bard": "gpt",
    "assistant": "gpt",
    "system": "system",
}
_SAVED_DATASET_MARKERS = ("dataset_info.json", "dataset_dict.json", "state.json")
_TURN_FIELD = re.compile(r"^conversations(?:\[(\d+)\])?(.*)$")


# --------------------------------------------------------------------------- config


@dataclass
class SourceSpec:
    """One source of a pool: where to read it and how to normalise it."""

    name: str
    path_or_hub_id: str
    split: str = "train"
    format: str = "auto"
    max_records: int | None = None  # read only the first N records of the split
    sample_size: int | None = None  # then keep a random subset of this size (source order kept)
    sample_seed: int = 42
    data_files: str | list[str] | None = None
    subset: str | None = None  # Hub dataset config name
    revision: str | None = None
    streaming: bool = False
    repair: str | None = None
    id_field: str | None = None
    missing_id: str = "index"

    def __post_init__(self) -> None:
        where = f"source {self.name!r}"
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"source name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.path_or_hub_id, str) or not self.path_or_hub_id.strip():
            raise ValueError(f"{where}: path_or_hub_id must be a non-empty string")
        if self.format not in FORMATS:
            raise ValueError(f"{where}: format must be one of {list(FORMATS)}, got {self.format!r}")
        if self.repair is not None and self.repair not in REPAIRS:
            raise ValueError(f"{where}: repair must be one of {list(REPAIRS)} or null, got {self.repair!r}")
        if self.missing_id not in MISSING_ID:
            raise ValueError(f"{where}: missing_id must be one of {list(MISSING_ID)}, got {self.missing_id!r}")
        for key in ("max_records", "sample_size"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{where}: {key} must be a positive integer, got {value!r}")
        if self.sample_size is not None and self.streaming:
            raise ValueError(f"{where}: sample_size needs the whole split; it cannot be used with streaming")

    @classmethod
    def from_dict(cls, raw: Any, position: int) -> SourceSpec:
        if not isinstance(raw, dict):
            raise ValueError(f"sources[{position}] must be a mapping, got {type(raw).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"sources[{position}]: unknown keys {unknown}; known keys are {sorted(known)}")
        missing = [k for k in ("name", "path_or_hub_id") if k not in raw]
        if missing:
            raise ValueError(f"sources[{position}]: missing required keys {missing}")
        return cls(**raw)


@dataclass
class PoolConfig:
    """Recipe for one pool build (see recipes/data/*.yaml)."""

    sources: list[dict[str, Any]] | str | None = field(
        default=None,
        metadata={
            "help": "List of sources, each {name, path_or_hub_id, split, format, max_records, sample_size, "
            "sample_seed, data_files, subset, revision, streaming, repair, id_field, missing_id}; "
            "on the command line as a JSON string."
        },
    )
    output_dir: str = field(default="runs/pool", metadata={"help": "Writes pool.jsonl, rejects.jsonl, manifest.json."})
    dedup: bool = field(default=False, metadata={"help": "Remove exact duplicates (same normalised turns)."})
    max_chars: int | None = field(
        default=DEFAULT_MAX_CHARS, metadata={"help": "Reject conversations longer than this many characters."}
    )
    keep_extra_fields: bool = field(
        default=True, metadata={"help": "Carry source fields that are not turns or ids into the pool records."}
    )

    def __post_init__(self) -> None:
        if isinstance(self.sources, str):
            try:
                self.sources = json.loads(self.sources)
            except json.JSONDecodeError as e:
                raise ValueError(f"sources: not valid JSON ({e.msg})") from e
        self.source_specs()

    def source_specs(self) -> list[SourceSpec]:
        if not isinstance(self.sources, list) or not self.sources:
            raise ValueError("sources: give a non-empty list of sources")
        specs = [SourceSpec.from_dict(s, i) for i, s in enumerate(self.sources)]
        names = Counter(s.name for s in specs)
        repeated = sorted(n for n, c in names.items() if c > 1)
        if repeated:
            raise ValueError(f"sources: names must be unique (they prefix the ids); repeated: {repeated}")
        return specs


# --------------------------------------------------------------------------- normalisation


class FormatError(ValueError):
    """A raw record that does not fit its source format (reason and the raw field it is about)."""

    def __init__(self, reason: str, field: str | None = None) -> None:
        self.reason, self.field = reason, field
        super().__init__(f"field {field!r}: {reason}" if field else reason)


@dataclass
class Normalised:
    """A raw record in the pool schema (no id yet) and how its turns map back to raw fields."""

    record: dict[str, Any]
    format: str
    turns_key: str = "conversations"  # the raw field that held the turns
    turn_fields: list[str] | None = None  # raw path of each normalised turn; None when already raw
    dict_turns: bool = True  # raw turns were objects, so '.from'/'.value' suffixes apply
    repaired: bool = False
    consumed: tuple[str, ...] = ()  # raw fields turned into turns, not carried as extra fields


_ALPACA_FIELDS = ("instruction", "input", "output")


def alpaca_query(instruction: str, input_text: str | None) -> str:
    """The human turn for an Alpaca record: the instruction, then a blank line and the input if any."""
    return f"{instruction}\n\n{input_text}" if input_text is not None and input_text.strip() else instruction


def _sharegpt(raw: dict[str, Any], fmt: str, repair: str | None, key: str = "conversations") -> Normalised:
    turns = raw[key]
    if not isinstance(turns, list):
        raise FormatError(f"must be a list of turns, got {type(turns).__name__}", key)
    out, paths = [], []
    for i, t in enumerate(turns):
        if not isinstance(t, dict):
            raise FormatError(f"turn must be an object, got {type(t).__name__}", f"{key}[{i}]")
        role = t.get("from")
        if not isinstance(role, str) or role.lower() not in SHAREGPT_ROLES:
            raise FormatError(f"unknown role {role!r}; expected one of {sorted(SHAREGPT_ROLES)}", f"{key}[{i}].from")
        extra = {k: v for k, v in t.items() if k not in ("from", "value")}
        out.append({"from": SHAREGPT_ROLES[role.lower()], "value": t.get("value"), **extra})
        paths.append(f"{key}[{i}]")
    repaired = False
    if repair == "drop_leading_gpt":
        start = 1 if out and out[0]["from"] == "system" else 0
        k = start
        while k < len(out) and out[k]["from"] == "gpt":
            k += 1
        if k > start:
            out, paths, repaired = out[:start] + out[k:], paths[:start] + paths[k:], True
    return Normalised({"conversations": out}, fmt, key, paths, True, repaired)


def _ultrachat_data(raw: dict[str, Any]) -> Normalised:
    data = raw["data"]
    if not isinstance(data, list):
        raise FormatError(f"must be a list of alternating human/gpt strings, got {type(data).__name__}", "data")
    out = []
    for i, text in enumerate(data):
        if not isinstance(text, str):
            raise FormatError(f"turn must be a string, got {type(text).__name__}", f"data[{i}]")
        out.append({"from": "human" if i % 2 == 0 else "gpt", "value": text})
    paths = [f"data[{i}]" for i in range(len(out))]
    return Normalised({"conversations": out}, "ultrachat", "data", paths, False, consumed=("data",))


def _messages(raw: dict[str, Any], fmt: str) -> Normalised:
    return Normalised({"messages": raw["messages"]}, fmt, "messages")  # validate_record converts role/content


def _alpaca(raw: dict[str, Any], fmt: str) -> Normalised:
    for key in ("instruction", "output"):
        if key not in raw:
            raise FormatError(f"missing {key!r}", key)
        if not isinstance(raw[key], str):
            raise FormatError(f"must be a string, got {type(raw[key]).__name__}", key)
    input_text = raw.get("input")
    if input_text is not None and not isinstance(input_text, str):
        raise FormatError(f"must be a string or null, got {type(input_text).__name__}", "input")
    query = alpaca_query(raw["instruction"], input_text)
    turns = [{"from": "human", "value": query}, {"from": "gpt", "value": raw["output"]}]
    human_field = "instruction" if query == raw["instruction"] else "instruction+input"
    return Normalised(
        {"conversations": turns}, fmt, "instruction", [human_field, "output"], False, consumed=_ALPACA_FIELDS
    )


def detect_format(raw: dict[str, Any]) -> str:
    """The format of one raw record, from the fields it has."""
    if "conversations" in raw:
        return "sharegpt"
    if isinstance(raw.get("data"), list):
        return "ultrachat"
    if "messages" in raw:
        return "messages"
    if "instruction" in raw:
        return "alpaca"
    raise FormatError(
        "cannot tell the format: no 'conversations', 'data', 'messages' or 'instruction' field", "conversations"
    )


def normalise_record(raw: Any, fmt: str = "auto", *, repair: str | None = None) -> Normalised:
    """One raw record in `fmt` -> the pool schema (turns only, no id, not yet validated)."""
    if not isinstance(raw, dict):
        raise FormatError(f"record must be a JSON object, got {type(raw).__name__}")
    if fmt == "auto":
        fmt = detect_format(raw)
    if fmt == "sharegpt":
        if "conversations" not in raw:
            raise FormatError("no 'conversations' field (ShareGPT: from/value turns)", "conversations")
        return _sharegpt(raw, fmt, repair)
    if fmt == "ultrachat":
        if "data" in raw:
            return _ultrachat_data(raw)
        if "messages" in raw:
            return _messages(raw, fmt)
        raise FormatError("no 'data' (alternating turns) or 'messages' field (UltraChat)", "data")
    if fmt == "wizardlm":
        if "conversations" in raw:
            return _sharegpt(raw, fmt, repair)
        if "instruction" in raw:
            return _alpaca(raw, fmt)
        raise FormatError("no 'conversations' or 'instruction'/'output' fields (WizardLM)", "conversations")
    if fmt == "alpaca":
        return _alpaca(raw, fmt)
    if fmt == "messages":
        if "messages" not in raw:
            raise FormatError("no 'messages' field (role/content turns)", "messages")
        return _messages(raw, fmt)
    raise ValueError(f"unknown format {fmt!r}; expected one of {list(FORMATS)}")


def _raw_field(fld: str | None, norm: Normalised | None) -> str | None:
    """Map a field named by `validate_record` on the normalised record back to the raw record's field."""
    if fld is None or norm is None:
        return fld
    if norm.turn_fields is None:  # messages: validate_record already names the raw '.role'/'.content' fields
        return fld
    m = _TURN_FIELD.match(fld)
    if not m:
        return fld
    if m[1] is None:
        return norm.turns_key + m[2]
    i = int(m[1])
    if i >= len(norm.turn_fields):
        return fld
    return norm.turn_fields[i] + (m[2] if norm.dict_turns else "")


def original_id(raw: Any, id_field: str | None = None) -> tuple[str | None, str | None]:
    """The source's own id for a record (a non-blank str or an int) and the field it came from."""
    if not isinstance(raw, dict):
        return None, None
    for key in (id_field,) if id_field else ID_FIELDS:
        value = raw.get(key)
        if isinstance(value, bool):
            continue
        if isinstance(value, int) or (isinstance(value, str) and value.strip()):
            return str(value), key
    return None, None


def reason_key(reason: str) -> str:
    """A reason with its record-specific numbers folded, so rejects can be counted by kind."""
    return re.sub(r"(?<![\w.])\d+(?![\w.]*\w)", "N", reason)


# --------------------------------------------------------------------------- reading sources


@dataclass
class SourceCounts:
    """Per-source accounting: ``n_in == kept + rejected + duplicates``."""

    name: str
    available: int | None = None  # rows in the split before max_records / sample_size, when known
    n_in: int = 0
    kept: int = 0
    rejected: int = 0
    duplicates: int = 0  # exact duplicates removed (dedup: true)
    duplicates_kept: int = 0  # exact duplicates seen but kept (dedup: false)
    repaired: int = 0
    ids_from_index: int = 0
    ids_from_content: int = 0
    formats: dict[str, int] = field(default_factory=dict)
    rejected_by_reason: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {"name": d.pop("name"), "in": d.pop("n_in"), **d}


_Row = tuple[int, int | None, Any, ConversationError | None]  # (index in split, line, raw, parse error)
_FILE_SUFFIXES = (".json", ".jsonl", ".parquet")


def _is_local_source(spec: SourceSpec) -> bool:
    """Local files and saved datasets are read directly; everything else goes to `datasets.load_dataset`."""
    path = Path(spec.path_or_hub_id)
    if spec.data_files is not None or spec.subset is not None or spec.streaming:
        return False
    if path.is_file():
        return True
    if path.is_dir():
        return any((path / m).exists() for m in _SAVED_DATASET_MARKERS)
    if path.suffix.lower() in _FILE_SUFFIXES or spec.path_or_hub_id.startswith((".", "/", "~")):
        raise FileNotFoundError(f"source {spec.name!r}: {spec.path_or_hub_id} does not exist")
    return False


def _load_hub(spec: SourceSpec) -> Any:
    import datasets

    return datasets.load_dataset(
        spec.path_or_hub_id,
        name=spec.subset,
        split=spec.split,
        data_files=spec.data_files,
        revision=spec.revision,
        streaming=spec.streaming,
    )


def _sample(indices: list[int], spec: SourceSpec) -> list[int]:
    if spec.sample_size is None:
        return indices
    if spec.sample_size >= len(indices):
        logger.warning(
            "%s: sample_size %d >= %d records available; taking all", spec.name, spec.sample_size, len(indices)
        )
        return indices
    chosen = random.Random(spec.sample_seed).sample(range(len(indices)), spec.sample_size)
    return [indices[i] for i in sorted(chosen)]


def open_source(spec: SourceSpec, demo_dir: str | Path | None = None) -> tuple[Iterator[_Row], int | None, int | None]:
    """Rows of one source, each with its index in the split; also the split size and the row count.

    ``demo:<format>`` writes the project's demo file for that format into `demo_dir` and reads it.
    """
    if spec.path_or_hub_id.startswith("demo:"):
        if demo_dir is None:
            raise ValueError(f"source {spec.name!r}: a demo: source needs a directory to write the demo file to")
        path = write_demo_source(spec.path_or_hub_id.split(":", 1)[1], demo_dir)
        spec = SourceSpec(**{**asdict(spec), "path_or_hub_id": str(path)})
    if _is_local_source(spec):
        rows: Iterator[_Row] = (
            (i, line, raw, err) for i, (line, raw, err) in enumerate(iter_source(spec.path_or_hub_id, spec.split))
        )
        if spec.max_records is not None:
            rows = islice(rows, spec.max_records)
        if spec.sample_size is None:
            return rows, None, None
        items = list(rows)
        keep = _sample(list(range(len(items))), spec)
        return (items[i] for i in keep), len(items), len(keep)
    ds = _load_hub(spec)
    if spec.streaming:
        stream: Iterator[_Row] = ((i, None, dict(rec), None) for i, rec in enumerate(ds))
        return (islice(stream, spec.max_records) if spec.max_records else stream), None, spec.max_records
    available = len(ds)
    indices = _sample(list(range(min(available, spec.max_records or available))), spec)
    if len(indices) < available:
        ds = ds.select(indices)
    return ((i, None, dict(rec), None) for i, rec in zip(indices, ds)), available, len(indices)


# --------------------------------------------------------------------------- building


_ALWAYS_CONSUMED = ("id", "conversations", "messages", "source")


def _pool_record(
    raw: dict[str, Any], norm: Normalised, validated: dict[str, Any], source: str, id_key: str | None, keep_extra: bool
) -> dict[str, Any]:
    """The pool record: id, turns, the source's other fields (unless asked not to), and the source name."""
    out = {"id": validated["id"], "conversations": validated["conversations"]}
    if keep_extra:
        consumed = {*_ALWAYS_CONSUMED, *norm.consumed, id_key}
        out.update((k, v) for k, v in raw.items() if k not in consumed)
        if "source" in raw and raw["source"] != source:
            out["source_original"] = raw["source"]
    out["source"] = source
    return out


def iter_source_records(
    spec: SourceSpec,
    counts: SourceCounts,
    *,
    max_chars: int | None = DEFAULT_MAX_CHARS,
    keep_extra_fields: bool = True,
    demo_dir: str | Path | None = None,
) -> Iterator[tuple[int, dict[str, Any] | None, dict[str, Any] | None]]:
    """Yield (index, pool record, None) for a valid record and (index, None, reject) for a bad one, counting both."""
    rows, counts.available, total = open_source(spec, demo_dir)
    seen_ids: dict[str, int] = {}
    formats: Counter[str] = Counter()
    for index, line, raw, parse_error in tqdm(rows, desc=spec.name, total=total, unit="rec", mininterval=1.0):
        counts.n_in += 1
        orig, id_key = original_id(raw, spec.id_field)
        rid = f"{spec.name}:{orig}" if orig is not None else None
        if rid is None and spec.missing_id == "index":
            rid = f"{spec.name}:{index}"
        norm: Normalised | None = None
        try:
            if parse_error is not None:
                raise ConversationError(parse_error.reason, source=spec.name, index=index, line=line)
            try:
                norm = normalise_record(raw, spec.format, repair=spec.repair)
            except FormatError as e:
                raise ConversationError(
                    e.reason, source=spec.name, index=index, record_id=rid, field=e.field, line=line
                ) from None
            candidate = {**norm.record, "id": rid} if rid is not None else dict(norm.record)
            try:
                rec, derived, _ = validate_record(
                    candidate, source=spec.name, index=index, line=line, max_chars=max_chars
                )
            except ConversationError as e:  # name the raw record's field, not the normalised one
                raise ConversationError(
                    e.reason, source=spec.name, index=index, record_id=rid, field=_raw_field(e.field, norm), line=line
                ) from None
            if derived:  # missing_id: content -> the content hash validate_record derived
                rec["id"] = f"{spec.name}:{rec['id']}"
            if rec["id"] in seen_ids:
                raise ConversationError(
                    f"duplicate id: already used by record {seen_ids[rec['id']]}",
                    source=spec.name,
                    index=index,
                    record_id=rec["id"],
                    field="id",
                    line=line,
                )
        except ConversationError as e:
            counts.rejected += 1
            key = reason_key(e.reason)
            counts.rejected_by_reason[key] = counts.rejected_by_reason.get(key, 0) + 1
            yield index, None, e.as_reject(raw)
            continue
        seen_ids[rec["id"]] = index
        formats[norm.format] += 1
        counts.repaired += norm.repaired
        if orig is None:
            if spec.missing_id == "index":
                counts.ids_from_index += 1
            else:
                counts.ids_from_content += 1
        yield index, _pool_record(raw, norm, rec, spec.name, id_key, keep_extra_fields), None
    counts.formats = dict(formats)


def build_pool(config: PoolConfig) -> dict[str, Any]:
    """Read every source, normalise, validate, optionally remove exact duplicates; write the pool.

    Writes into ``config.output_dir``: ``pool.jsonl`` (conversation records), ``rejects.jsonl``
    (source, index, id, field, reason, and the raw record when small) and ``manifest.json``.
    Returns the counts written to the manifest.
    """
    specs = config.source_specs()
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    pool_path, rejects_path = out / "pool.jsonl", out / "rejects.jsonl"
    per_source = {s.name: SourceCounts(s.name) for s in specs}
    first_by_content: dict[str, str] = {}
    rejects_tmp = rejects_path.with_name(rejects_path.name + ".tmp")

    def kept_records(rej_file: Any) -> Iterator[dict[str, Any]]:
        for spec in specs:
            counts = per_source[spec.name]
            for index, rec, rej in iter_source_records(
                spec,
                counts,
                max_chars=config.max_chars,
                keep_extra_fields=config.keep_extra_fields,
                demo_dir=out / "demo-sources",
            ):
                if rej is not None:
                    rej_file.write(json.dumps(rej, ensure_ascii=False, default=str) + "\n")
                    continue
                content = derive_id(rec["conversations"])
                first = first_by_content.get(content)
                if first is None:
                    first_by_content[content] = rec["id"]
                elif config.dedup:
                    counts.duplicates += 1
                    rej_file.write(
                        json.dumps(
                            {
                                "source": spec.name,
                                "index": index,
                                "line": None,
                                "id": rec["id"],
                                "field": "conversations",
                                "reason": f"duplicate of {first}",
                            },
                            ensure_ascii=False,
                        )
                        + "\n"
                    )
                    continue
                else:
                    counts.duplicates_kept += 1
                counts.kept += 1
                yield rec
            c = counts
            logger.info(
                "%s: %d in, %d kept, %d rejected, %d duplicates removed",
                spec.name,
                c.n_in,
                c.kept,
                c.rejected,
                c.duplicates,
            )
            if c.n_in and c.kept == 0:
                logger.warning(
                    "%s: every record was rejected; is format %r right? see %s", spec.name, spec.format, rejects_path
                )

    try:
        with open(rejects_tmp, "w", encoding="utf-8") as rej_file:
            write_jsonl(pool_path, kept_records(rej_file))
            rej_file.flush()
            os.fsync(rej_file.fileno())
    except BaseException:
        for tmp in (rejects_tmp, pool_path.with_name(pool_path.name + ".tmp")):
            tmp.unlink(missing_ok=True)
        raise
    os.replace(rejects_tmp, rejects_path)

    total = {k: sum(getattr(c, k) for c in per_source.values()) for k in ("n_in", "kept", "rejected", "duplicates")}
    for c in per_source.values():
        assert c.n_in == c.kept + c.rejected + c.duplicates, c
    counts = {
        "in": total["n_in"],
        "kept": total["kept"],
        "rejected": total["rejected"],
        "duplicates": total["duplicates"],
        "sources": {name: c.as_dict() for name, c in per_source.items()},
    }
    local_inputs = [s.path_or_hub_id for s in specs if Path(s.path_or_hub_id).is_file()]
    demo_inputs = sorted(str(p) for p in (out / "demo-sources").glob("*")) if (out / "demo-sources").is_dir() else []
    write_manifest(
        out / "manifest.json",
        step="build_pool",
        config=config,
        inputs=local_inputs + demo_inputs,
        outputs=[pool_path, rejects_path],
        counts=counts,
        extra={
            "hub_sources": [
                {"name": s.name, "id": s.path_or_hub_id, "revision": s.revision, "data_files": s.data_files}
                for s in specs
                if not Path(s.path_or_hub_id).exists() and not s.path_or_hub_id.startswith("demo:")
            ]
        },
    )
    logger.info("pool: %d records from %d sources -> %s", counts["kept"], len(specs), pool_path)
    return counts


# --------------------------------------------------------------------------- demo sources

_DEMO_TOPICS = (
    "tidal pools",
    "sourdough starters",
    "bicycle gears",
    "paper maps",
    "rain gardens",
    "clock escapements",
)
_DEMO_QUESTIONS = (
    "What is worth knowing about {t} before trying it yourself?",
    "Give me a short checklist for {t}.",
    "Explain {t} to a twelve-year-old.",
    "What do beginners usually get wrong about {t}?",
    "Write two sentences that make {t} sound exciting.",
)
_DEMO_ANSWERS = (
    "Start small with {t}: learn the two or three ideas that matter most, then practise them.",
    "1. Read about {t}. 2. Gather the basic tools. 3. Try once and note what surprised you.",
    "Think of {t} as a puzzle: each part has one job, and together they make the whole thing work.",
    "Most beginners rush {t}; going slowly and keeping notes avoids nearly every early mistake.",
    "{T} turn an ordinary afternoon into an experiment. Every attempt teaches you something new.",
)
_DEMO_OFFSET = {"sharegpt": 0, "ultrachat": 1, "wizardlm": 2, "alpaca": 3, "messages": 4}


def _demo_turn(topic: str, k: int) -> tuple[str, str]:
    k %= len(_DEMO_QUESTIONS)
    fill = {"t": topic, "T": topic[0].upper() + topic[1:]}
    return _DEMO_QUESTIONS[k].format(**fill), _DEMO_ANSWERS[k].format(**fill)


def demo_records(fmt: str) -> list[dict[str, Any]]:
    """Project-written records in one source format: six good ones (some multi-turn), two flawed.

    The flaws exercise the reject and repair paths: a reply-first turn order (kept with
    ``repair: drop_leading_gpt``) and an empty or mistyped turn. The first ``messages`` record is an
    exact copy of the first ``sharegpt`` record, so ``dedup: true`` has one duplicate to remove.
    """
    if fmt not in _DEMO_OFFSET:
        raise ValueError(f"no demo records for format {fmt!r}; expected one of {sorted(_DEMO_OFFSET)}")
    rows: list[dict[str, Any]] = []
    for i, topic in enumerate(_DEMO_TOPICS):
        k = 0 if (fmt == "messages" and i == 0) else _DEMO_OFFSET[fmt] + i
        q, a = _demo_turn(topic, k)
        q2, a2 = _demo_turn(topic, k + 1)
        multi = i % 2 == 1
        if fmt == "sharegpt":
            turns = [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
            turns += [{"from": "human", "value": q2}, {"from": "gpt", "value": a2}] if multi else []
            rows.append({"id": f"demo_{i}", "conversations": turns})
        elif fmt == "ultrachat":
            rows.append({"id": str(i), "data": [q, a, q2, a2] if multi else [q, a]})
        elif fmt == "wizardlm":
            rows.append(
                {"idx": f"wiz{i}", "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}
            )
        elif fmt == "alpaca":
            rows.append({"instruction": q, "input": f"Keep it about {topic}." if multi else "", "output": a})
        else:
            msgs = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            rows.append({"prompt_id": f"m{i}", "messages": msgs})
    reply_first = [
        {"from": "gpt", "value": "Hello! What would you like to talk about?"},
        {"from": "human", "value": "Tell me one fact about rain gardens."},
        {"from": "gpt", "value": "A rain garden holds storm water long enough for it to soak into the ground."},
    ]
    if fmt in ("sharegpt", "wizardlm"):
        key = "id" if fmt == "sharegpt" else "idx"
        rows.append({key: "demo_reply_first", "conversations": reply_first})
        rows.append(
            {
                key: "demo_empty_reply",
                "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": ""}],
            }
        )
    elif fmt == "ultrachat":
        rows.append({"id": "demo_bad_type", "data": ["A question with a number for an answer", 42]})
        rows.append({"id": "demo_empty_reply", "data": ["A question", "   "]})
    elif fmt == "alpaca":
        rows.append({"instruction": "Summarise the text.", "input": "Short text.", "output": ""})
        rows.append({"instruction": 7, "output": "seven"})
    else:
        rows.append({"prompt_id": "demo_bad_role", "messages": [{"role": "robot", "content": "beep"}]})
        rows.append(
            {
                "prompt_id": "demo_empty",
                "messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "ok"}],
            }
        )
    return rows


def write_demo_source(fmt: str, out_dir: str | Path) -> Path:
    """Write `demo_records(fmt)` to `out_dir` (a JSON array for ShareGPT/WizardLM/Alpaca, JSONL otherwise)."""
    out_dir = Path(out_dir)
    records = demo_records(fmt)
    if fmt in ("sharegpt", "wizardlm", "alpaca"):
        path = out_dir / f"{fmt}.json"
        write_json(path, records)
    else:
        path = out_dir / f"{fmt}.jsonl"
        write_jsonl(path, records)
    return path
