"""Build a conversation pool from Hub datasets or local files: normalise, validate, optionally dedup.

    python data_prep/build_pool.py --config recipes/data/x_sota.yaml [--key value ...]

Sources are listed in the recipe (on the command line: ``--sources '<JSON list>'``). Writes
pool.jsonl, rejects.jsonl and manifest.json (counts per source: in, kept, rejected by reason,
duplicates) into ``output_dir``. See deita_train/pools.py and recipes/data/README.md.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from deita_train.config import parse_config, setup_logging  # noqa: E402
from deita_train.pools import PoolConfig, build_pool  # noqa: E402


logger = logging.getLogger("data_prep.build_pool")


def main(args: Sequence[str] | None = None) -> dict:
    setup_logging()
    (config,) = parse_config(PoolConfig, args=args)
    counts = build_pool(config)
    summary = {k: counts[k] for k in ("in", "kept", "rejected", "duplicates")}
    logger.info("wrote %s: %s", config.output_dir, json.dumps(summary))
    return counts


if __name__ == "__main__":
    main()
