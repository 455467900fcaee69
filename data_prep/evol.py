"""EVOL scorer-training data: seeds -> evolution chains -> joint LLM rankings -> prompt/digit JSONL.

    python data_prep/evol.py --config recipes/evol/gpt-4o-mini-2k.yaml [--key value ...]

Talks to any OpenAI-compatible endpoint (``base_url``; the key is read from the env var named by
``api_key_env``). Every request is cached under ``cache_dir``, so a killed run started again with
the same recipe resumes without paying twice. Writes complexity_{train,dev}.jsonl,
quality_{train,dev}.jsonl, rejects.jsonl and manifest.json into ``output_dir``.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from deita_train.config import parse_config, setup_logging  # noqa: E402
from deita_train.evol import EvolConfig, build_evol_sets  # noqa: E402


logger = logging.getLogger("data_prep.evol")


def main(args: Sequence[str] | None = None) -> dict:
    setup_logging()
    (config,) = parse_config(EvolConfig, args=args)
    counts = build_evol_sets(config)
    logger.info("wrote %s: %s", config.output_dir, json.dumps(counts["records"]))
    return counts


if __name__ == "__main__":
    main()
