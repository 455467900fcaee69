"""Embed a (scored) pool: last-token, final-norm hidden states of the vicuna_v1.1-rendered conversations.

    python data_prep/embed.py --config recipes/embed/mistral-7b.yaml [--key value ...]
    accelerate launch --num_processes 8 data_prep/embed.py --config recipes/embed/mistral-7b.yaml
    torchrun --standalone --nproc_per_node 2 data_prep/embed.py --config recipes/embed/tiny-demo.yaml  # CPU

Sharded over the processes and resumable: a killed run started again with the same recipe redoes
only the chunks that were not finished. Writes embeddings.npy (float16, memory-mappable), ids.json
(same row order), tokens.npy, rejects.jsonl and manifest.json into ``output_dir``.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from deita_train.config import parse_config, setup_logging  # noqa: E402
from deita_train.embedding import EmbedConfig, embed_pool  # noqa: E402


logger = logging.getLogger("data_prep.embed")


def main(args: Sequence[str] | None = None) -> dict:
    setup_logging()
    (config,) = parse_config(EmbedConfig, args=args)
    counts = embed_pool(config)
    if counts:
        logger.info("wrote %s: %s", config.output_dir, json.dumps(counts))
    return counts


if __name__ == "__main__":
    main()
