"""The Deita embedder: one vector per conversation, for the diversity filter.

What is embedded (the original's definition, "1b. Embedder"): the whole conversation rendered with
FastChat's vicuna_v1.1 (`templates.render_conversation`, a leading system turn replaces the default
system prompt), tokenized with BOS, truncated to `max_length` (2048) tokens keeping the start. The
vector is the final-layer hidden state, after the model's final norm, at the last real token:

* a full conversation ends with the ``</s>`` that closes the last reply, and that is the token;
* a conversation that ends with a human turn renders as ``... USER: {question} `` (no reply, no
  ``</s>``), so the vector sits on the last token of that text (the separator after the question);
* a conversation longer than `max_length` loses its end, ``</s>`` included, and the vector sits on
  the last kept token, as in the original. Such records are counted (`truncated`), and
  ``tokens.npy`` keeps each record's embedded and full token counts.

How (the fixes listed in the reference notes): the base model only (`AutoModel`, whose forward
ends with the final norm: no LM head, no all-layer hidden states), `torch.inference_mode`, batches
of similar token length, right padding and a gather at each row's last real token, float16 output
in a memory-mappable ``embeddings.npy`` with ``ids.json`` in the same row order (joined to scores
by id, never by position). bf16 with SDPA or FlashAttention-2 on GPU, float32 on CPU.

`embed_pool` runs as N processes (accelerate launch or torchrun) over a `sharded.ShardedJob`: the
pool is cut into fixed chunks, each written atomically, so a killed run resumes without losing or
repeating anything and gives the same bytes as an uninterrupted one (a chunk's batches depend only
on that chunk). The main process merges the chunks at the end.

An optional, cheaper backend embeds the same rendered text with any sentence-transformers model
(imported only when asked for; the package is not a dependency).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deita_train.conversations import load_conversations_with_report
from deita_train.jsonl import file_sha256, write_json
from deita_train.manifest import write_manifest
from deita_train.sharded import (
    DistInfo,
    ShardedJob,
    dist_info,
    fingerprint,
    load_array_chunk,
    save_array_chunk,
)
from deita_train.templates import render_conversation


logger = logging.getLogger(__name__)

BACKENDS = ("causal_lm", "sentence_transformers")
EMBEDDINGS_FILE = "embeddings.npy"
IDS_FILE = "ids.json"
TOKENS_FILE = "tokens.npy"
EMBEDDED_TEXT = (
    "vicuna_v1.1 rendering of the whole conversation, BOS added, truncated to max_length keeping the start; "
    "final-layer (post-norm) hidden state at the last real token: the </s> closing the last reply, or the "
    "last kept token when truncated, or the separator after a trailing user turn"
)


@dataclass
class EmbedConfig:
    """Recipe of `data_prep/embed.py` (`--config recipes/embed/*.yaml`)."""

    input_path: str = field(metadata={"help": "Pool or scored pool: .jsonl/.json/.parquet, saved dataset or Hub id."})
    output_dir: str = field(metadata={"help": "Gets embeddings.npy, ids.json, tokens.npy, manifest.json, chunks/."})
    model_name_or_path: str = field(
        default="mistralai/Mistral-7B-v0.1", metadata={"help": "Causal LM (or sentence-transformers model)."}
    )
    backend: str = field(default="causal_lm", metadata={"help": f"One of {BACKENDS}."})
    split: str | None = field(default=None, metadata={"help": "Split, for a saved DatasetDict or Hub id."})
    revision: str | None = field(default=None, metadata={"help": "Model revision on the Hub."})
    max_length: int = field(default=2048, metadata={"help": "Tokens kept per conversation (the start)."})
    batch_size: int = field(default=8, metadata={"help": "Most rows per forward pass."})
    max_tokens_per_batch: int | None = field(
        default=None, metadata={"help": "Most padded tokens (rows x longest) per forward pass; None: no cap."}
    )
    chunk_size: int = field(default=1024, metadata={"help": "Records per resumable chunk file."})
    dtype: str = field(default="auto", metadata={"help": "auto (bfloat16 on GPU, float32 on CPU), or a torch dtype."})
    attn_implementation: str | None = field(
        default=None, metadata={"help": "sdpa (default), flash_attention_2 or eager."}
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow model code from the Hub."})
    keep_chunks: bool = field(default=True, metadata={"help": "Keep chunks/ after the merge (else delete it)."})

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        for name in ("max_length", "batch_size", "chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_tokens_per_batch is not None and self.max_tokens_per_batch < 1:
            self.max_tokens_per_batch = None


@dataclass
class EmbedResult:
    """Vectors (float32, before the float16 cast) and, per row, token counts and whether it ends on EOS."""

    vectors: np.ndarray
    n_tokens: np.ndarray
    full_tokens: np.ndarray
    ends_with_eos: np.ndarray

    @property
    def truncated(self) -> np.ndarray:
        return self.full_tokens > self.n_tokens


# ----------------------------------------------------------------------------------------------
# Text and tokens
# ----------------------------------------------------------------------------------------------


def conversation_text(record: dict[str, Any]) -> str:
    """The text that gets embedded: the whole conversation rendered with vicuna_v1.1."""
    return render_conversation(record["conversations"])


def tokenize_for_embedding(
    texts: Sequence[str], tokenizer: Any, max_length: int
) -> tuple[list[list[int]], np.ndarray]:
    """Token ids (with BOS) truncated to `max_length` keeping the start, and each text's full token count."""
    enc = tokenizer(list(texts), add_special_tokens=True, verbose=False)["input_ids"]
    full = np.asarray([len(x) for x in enc], dtype=np.int64)
    return [list(x[:max_length]) for x in enc], full


def length_sorted_batches(
    lengths: Sequence[int], batch_size: int, max_tokens_per_batch: int | None = None
) -> list[list[int]]:
    """Row indices cut into batches of similar length, longest first (a memory problem shows up at once).

    A batch holds at most `batch_size` rows and, when `max_tokens_per_batch` is set, at most that many
    padded tokens (rows x its longest row); a single row longer than the cap still gets its own batch.
    The order is stable, so the batches depend only on the lengths.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: -int(lengths[i]))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        width = int(lengths[current[0]]) if current else int(lengths[i])
        too_many = len(current) >= batch_size
        too_wide = max_tokens_per_batch is not None and (len(current) + 1) * width > max_tokens_per_batch
        if current and (too_many or too_wide):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


# ----------------------------------------------------------------------------------------------
# The causal-LM embedder
# ----------------------------------------------------------------------------------------------


def resolve_dtype(name: str, device: Any) -> Any:
    """`auto`: bfloat16 on GPU, float32 on CPU; otherwise the named torch dtype."""
    import torch

    if name == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}; use auto, float32, bfloat16 or float16")
    return dtype


def load_embedder(
    model_name_or_path: str,
    *,
    device: Any = "cpu",
    dtype: str = "auto",
    attn_implementation: str | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> tuple[Any, Any]:
    """The base model (no LM head: `AutoModel` of a causal-LM checkpoint) in eval mode, and its tokenizer.

    The tokenizer pads on the right (the gather relies on it) with `unk` (or EOS) as pad token when
    the checkpoint has none, as the original.
    """
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    tokenizer = AutoTokenizer.from_pretrained(
        model_name_or_path, revision=revision, trust_remote_code=trust_remote_code
    )
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    torch_dtype = resolve_dtype(dtype, device)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the unused lm_head of a CausalLM checkpoint is expected here
    try:
        model = AutoModel.from_pretrained(
            model_name_or_path,
            revision=revision,
            dtype=torch_dtype,
            attn_implementation=attn_implementation or "sdpa",
            trust_remote_code=trust_remote_code,
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    model.to(device).eval()
    return model, tokenizer


class CausalLMEmbedder:
    """Last-token, final-norm hidden states of a decoder (see the module docstring)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_length: int = 2048,
        batch_size: int = 8,
        max_tokens_per_batch: int | None = None,
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.max_length, self.batch_size, self.max_tokens_per_batch = max_length, batch_size, max_tokens_per_batch
        if tokenizer.padding_side != "right":
            raise ValueError("the embedder gathers at each row's last real token and needs right padding")

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def embed_token_ids(self, input_ids: Sequence[Sequence[int]]) -> np.ndarray:
        """float32 vectors, one per row of `input_ids`, in the given order (batched by length inside)."""
        import torch

        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id
        out = np.empty((len(input_ids), self.dim), dtype=np.float32)
        lengths = [len(x) for x in input_ids]
        if min(lengths, default=1) < 1:
            raise ValueError("cannot embed an empty token sequence")
        for batch in length_sorted_batches(lengths, self.batch_size, self.max_tokens_per_batch):
            width = max(lengths[i] for i in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for r, i in enumerate(batch):
                ids[r, : lengths[i]] = torch.as_tensor(input_ids[i], dtype=torch.long)
                mask[r, : lengths[i]] = 1
            last = torch.as_tensor([lengths[i] - 1 for i in batch], device=device)
            with torch.inference_mode():
                hidden = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
                vec = hidden[torch.arange(len(batch), device=device), last]
            out[batch] = vec.float().cpu().numpy()
        return out

    def embed(self, texts: Sequence[str]) -> EmbedResult:
        ids, full = tokenize_for_embedding(texts, self.tokenizer, self.max_length)
        eos = self.tokenizer.eos_token_id
        return EmbedResult(
            vectors=self.embed_token_ids(ids),
            n_tokens=np.asarray([len(x) for x in ids], dtype=np.int64),
            full_tokens=full,
            ends_with_eos=np.asarray([bool(x) and x[-1] == eos for x in ids], dtype=bool),
        )


class SentenceTransformerEmbedder:
    """A cheaper embedder: any sentence-transformers model on the same rendered text.

    Its own pooling and normalisation apply; `max_length` is capped at the model's `max_seq_length`.
    """

    def __init__(
        self,
        model_name_or_path: str,
        *,
        device: Any = "cpu",
        max_length: int = 2048,
        batch_size: int = 8,
        revision: str | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as e:
            raise ImportError(
                "backend 'sentence_transformers' needs the sentence-transformers package (pip install "
                "sentence-transformers); it is optional and not installed with deita-train"
            ) from e
        self.model = SentenceTransformer(
            model_name_or_path, device=str(device), revision=revision, trust_remote_code=trust_remote_code
        )
        if self.model.max_seq_length is None or self.model.max_seq_length > max_length:
            self.model.max_seq_length = max_length
        self.max_length = int(self.model.max_seq_length)
        self.batch_size = batch_size

    @property
    def dim(self) -> int:
        return int(self.model.get_sentence_embedding_dimension())

    def embed(self, texts: Sequence[str]) -> EmbedResult:
        texts = list(texts)
        tok = self.model.tokenizer
        full = np.asarray(
            [len(x) for x in tok(texts, add_special_tokens=True, verbose=False)["input_ids"]], dtype=np.int64
        )
        vectors = self.model.encode(texts, batch_size=self.batch_size, convert_to_numpy=True, show_progress_bar=False)
        n = np.minimum(full, self.max_length)
        # no </s> here: "ends with EOS" stands for "the vector saw the end of the text"
        return EmbedResult(np.asarray(vectors, dtype=np.float32), n, full, full <= self.max_length)


def build_embedder(config: EmbedConfig, device: Any = "cpu") -> CausalLMEmbedder | SentenceTransformerEmbedder:
    """The embedder a recipe asks for, on `device`."""
    if config.backend == "sentence_transformers":
        return SentenceTransformerEmbedder(
            config.model_name_or_path,
            device=device,
            max_length=config.max_length,
            batch_size=config.batch_size,
            revision=config.revision,
            trust_remote_code=config.trust_remote_code,
        )
    model, tokenizer = load_embedder(
        config.model_name_or_path,
        device=device,
        dtype=config.dtype,
        attn_implementation=config.attn_implementation,
        revision=config.revision,
        trust_remote_code=config.trust_remote_code,
    )
    return CausalLMEmbedder(
        model,
        tokenizer,
        max_length=config.max_length,
        batch_size=config.batch_size,
        max_tokens_per_batch=config.max_tokens_per_batch,
    )


def to_float16(vectors: np.ndarray, ids: Sequence[str]) -> np.ndarray:
    """Cast to float16, refusing values outside its range (never store inf)."""
    with np.errstate(over="ignore"):
        out = vectors.astype(np.float16)
    bad = np.flatnonzero(~np.isfinite(out).all(axis=1))
    if bad.size:
        raise ValueError(
            f"{bad.size} embedding(s) overflow float16 or are not finite, e.g. id {ids[int(bad[0])]!r} "
            f"(max |x| = {float(np.nanmax(np.abs(vectors[bad[0]]))):.4g})"
        )
    return out


# ----------------------------------------------------------------------------------------------
# On-disk layout
# ----------------------------------------------------------------------------------------------


def save_embeddings(
    out_dir: str | Path, ids: Sequence[str], matrix: np.ndarray, tokens: np.ndarray | None = None
) -> None:
    """Write ``embeddings.npy`` (float16) and ``ids.json`` (same row order), and optionally ``tokens.npy``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ids = [str(x) for x in ids]
    if len(ids) != matrix.shape[0]:
        raise ValueError(f"{len(ids)} ids for {matrix.shape[0]} embedding rows")
    _check_unique(ids, "ids")
    _save_npy(out_dir / EMBEDDINGS_FILE, np.asarray(matrix, dtype=np.float16))
    if tokens is not None:
        _save_npy(out_dir / TOKENS_FILE, np.asarray(tokens, dtype=np.int32))
    write_json(out_dir / IDS_FILE, ids, indent=None)


def _save_npy(path: Path, array: np.ndarray) -> None:
    """np.save, atomically (temporary file + rename)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def load_embeddings(emb_dir: str | Path, mmap: bool = True) -> tuple[list[str], np.ndarray]:
    """(ids, float16 matrix) from an embeddings directory; the matrix is memory-mapped by default."""
    emb_dir = Path(emb_dir)
    for name in (EMBEDDINGS_FILE, IDS_FILE):
        if not (emb_dir / name).is_file():
            raise FileNotFoundError(f"{emb_dir / name} not found: is {emb_dir} the output_dir of data_prep/embed.py?")
    ids = json.loads((emb_dir / IDS_FILE).read_text(encoding="utf-8"))
    matrix = np.load(emb_dir / EMBEDDINGS_FILE, mmap_mode="r" if mmap else None)
    if matrix.ndim != 2 or len(ids) != matrix.shape[0]:
        raise ValueError(f"{emb_dir}: {len(ids)} ids but embeddings of shape {matrix.shape}")
    return [str(x) for x in ids], matrix


def _check_unique(ids: Sequence[str], what: str) -> None:
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dups = [x for x in ids if x in seen or seen.add(x)]
        raise ValueError(f"{what}: {len(dups)} duplicate id(s), e.g. {sorted(set(dups))[:5]}")


# ----------------------------------------------------------------------------------------------
# The sharded, resumable job
# ----------------------------------------------------------------------------------------------


def model_identity(model_name_or_path: str, revision: str | None = None) -> dict[str, Any]:
    """What identifies the weights: a local directory's config hash and file sizes, or a Hub id and revision."""
    path = Path(model_name_or_path)
    if not path.is_dir():
        return {"model": model_name_or_path, "revision": revision}
    files = sorted(
        p for p in path.iterdir() if p.is_file() and p.suffix in (".safetensors", ".bin", ".json", ".model")
    )
    return {
        "model": str(path.resolve()),
        "config_sha256": file_sha256(path / "config.json") if (path / "config.json").is_file() else None,
        "files": [[p.name, p.stat().st_size] for p in files],
    }


def job_fingerprint(config: EmbedConfig, input_hash: str | None) -> str:
    """Fixes everything that changes the vectors; batch sizes and attention kernel do not (below 1e-5)."""
    return fingerprint(
        "embed-v1",
        input_hash,
        config.split,
        config.backend,
        model_identity(config.model_name_or_path, config.revision),
        config.max_length,
        config.dtype,
    )


def _work_order(records: Sequence[dict[str, Any]]) -> list[str]:
    """Ids longest conversation first (by characters, cheap and the same on every rank): chunks of similar length."""
    chars = [sum(len(t["value"]) for t in r["conversations"]) for r in records]
    order = sorted(range(len(records)), key=lambda i: -chars[i])
    return [records[i]["id"] for i in order]


def _embed_chunk(embedder: Any, job: ShardedJob, k: int, by_id: dict[str, dict[str, Any]]) -> None:
    ids = job.chunk_ids(k)
    result = embedder.embed([conversation_text(by_id[i]) for i in ids])
    save_array_chunk(
        job.chunk_path(k),
        ids,
        to_float16(result.vectors, ids),
        n_tokens=np.asarray(result.n_tokens),
        full_tokens=np.asarray(result.full_tokens),
        ends_with_eos=np.asarray(result.ends_with_eos),
    )


def merge_chunks(job: ShardedJob, ids: Sequence[str], out_dir: Path) -> dict[str, int]:
    """Assemble every chunk into the final files, rows in `ids` order; each id exactly once."""
    row_of = {x: r for r, x in enumerate(ids)}
    filled = np.zeros(len(ids), dtype=bool)
    tokens = np.zeros((len(ids), 2), dtype=np.int32)
    ends_eos = np.zeros(len(ids), dtype=bool)
    matrix = None
    tmp = out_dir / (EMBEDDINGS_FILE + ".tmp")
    for k in range(job.n_chunks):
        chunk_ids, array, meta = load_array_chunk(job.chunk_path(k))
        if chunk_ids != job.chunk_ids(k) or array.shape[0] != len(chunk_ids):
            raise RuntimeError(f"{job.chunk_path(k)} does not hold the ids its plan gives it; delete it and rerun")
        if matrix is None:
            matrix = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(len(ids), array.shape[1]))
        rows = np.asarray([row_of[x] for x in chunk_ids], dtype=np.int64)
        if filled[rows].any():
            raise RuntimeError(f"id {ids[int(rows[filled[rows]][0])]!r} appears in two chunks")
        filled[rows] = True
        matrix[rows] = array
        tokens[rows, 0], tokens[rows, 1] = meta["n_tokens"], meta["full_tokens"]
        ends_eos[rows] = meta["ends_with_eos"]
    if not filled.all():
        raise RuntimeError(
            f"{int((~filled).sum())} id(s) have no embedding, e.g. {ids[int(np.flatnonzero(~filled)[0])]!r}"
        )
    dim = 0 if matrix is None else int(matrix.shape[1])
    if matrix is None:
        _save_npy(out_dir / EMBEDDINGS_FILE, np.zeros((0, 0), dtype=np.float16))
    else:
        matrix.flush()
        del matrix
        os.replace(tmp, out_dir / EMBEDDINGS_FILE)
    _save_npy(out_dir / TOKENS_FILE, tokens)
    write_json(out_dir / IDS_FILE, list(ids), indent=None)
    return {
        "embedded": len(ids),
        "dim": dim,
        "truncated": int((tokens[:, 1] > tokens[:, 0]).sum()),
        "not_ending_eos": int((~ends_eos).sum()),
    }


def _already_complete(out_dir: Path, fp: str, ids: Sequence[str]) -> dict[str, Any] | None:
    manifest_path = out_dir / "manifest.json"
    if not (manifest_path.is_file() and (out_dir / EMBEDDINGS_FILE).is_file() and (out_dir / IDS_FILE).is_file()):
        return None
    manifest = json.loads(manifest_path.read_text())
    ids_hash = hashlib.sha256("\n".join(ids).encode()).hexdigest()
    if manifest.get("fingerprint") == fp and manifest.get("ids_sha256") == ids_hash:
        return manifest.get("counts")
    return None


def embed_pool(config: EmbedConfig, dist: DistInfo | None = None) -> dict[str, Any]:
    """Embed every valid record of `config.input_path` into `config.output_dir`; returns the counts.

    Every process calls this (one process is fine too). Each embeds its share of chunks; the main
    process merges them and writes the manifest. Invalid records go to ``rejects.jsonl`` with a
    reason, and ``in == embedded + rejected``. Rerunning after a kill redoes only unfinished chunks;
    rerunning a finished job returns its counts.
    """
    from tqdm.auto import tqdm

    dist = dist or dist_info()
    out_dir = Path(config.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rejects_path = out_dir / "rejects.jsonl"
    records, report = load_conversations_with_report(
        config.input_path, config.split, strict=False, rejects_path=rejects_path if dist.is_main else None
    )
    input_hash = file_sha256(config.input_path) if Path(config.input_path).exists() else None
    fp = job_fingerprint(config, input_hash)
    ids_in_order = [r["id"] for r in records]
    done = _already_complete(out_dir, fp, ids_in_order)
    if done is not None:
        logger.info("%s already holds these embeddings (fingerprint %s); nothing to do", out_dir, fp)
        return done

    job = ShardedJob(out_dir, _work_order(records), config.chunk_size, fp, suffix=".npz")
    job.prepare(dist)
    pending = job.pending(dist.rank, dist.world_size)
    logger.info(
        "rank %d/%d: %d records, %d chunks of %d, %d left for this process",
        dist.rank,
        dist.world_size,
        len(records),
        job.n_chunks,
        config.chunk_size,
        len(pending),
    )
    if pending:
        device = dist.state.device if dist.state is not None else "cpu"
        embedder = build_embedder(config, device=device)
        by_id = {r["id"]: r for r in records}
        for k in tqdm(pending, desc=f"embed (rank {dist.rank})", disable=not dist.is_main, unit="chunk"):
            _embed_chunk(embedder, job, k, by_id)
    dist.barrier()
    if not dist.is_main:
        return {}
    if not job.done():
        raise RuntimeError(f"{out_dir}: some chunks are missing after every process finished; rerun to complete them")
    merged = merge_chunks(job, ids_in_order, out_dir)
    counts = {"in": report.n_in, "rejected": report.n_rejected, **merged}
    assert counts["in"] == counts["embedded"] + counts["rejected"]
    model_id = model_identity(config.model_name_or_path, config.revision)
    write_manifest(
        out_dir / "manifest.json",
        step="embed",
        config=asdict(config),
        inputs=[config.input_path],
        outputs=[out_dir / EMBEDDINGS_FILE, out_dir / IDS_FILE, out_dir / TOKENS_FILE, rejects_path],
        counts=counts,
        extra={
            "fingerprint": fp,
            "ids_sha256": hashlib.sha256("\n".join(ids_in_order).encode()).hexdigest(),
            "embedder": {
                "backend": config.backend,
                "model": config.model_name_or_path,
                "identity": model_id,
                "dim": merged["dim"],
                "max_length": config.max_length,
                "dtype": config.dtype,
                "storage_dtype": "float16",
                "embedded_text": EMBEDDED_TEXT,
            },
            "world_size": dist.world_size,
            "load_report": report.as_dict(),
        },
    )
    if not config.keep_chunks:
        shutil.rmtree(job.chunk_dir, ignore_errors=True)
    logger.info(
        "embedded %d records (dim %d) into %s; %d truncated to %d tokens, %d rejected",
        counts["embedded"],
        counts["dim"],
        out_dir,
        counts["truncated"],
        config.max_length,
        counts["rejected"],
    )
    return counts
