"""Score a conversation pool per turn with the Deita complexity and quality scorers.

    python data_prep/score.py --config recipes/score/deita-scorers.yaml [--key value ...]
    torchrun --standalone --nproc_per_node 2 data_prep/score.py --config ...      # CPU, 2 processes
    accelerate launch --num_processes 8 data_prep/score.py --config ...           # 8 GPUs

Each process scores its share of the chunks and writes each finished chunk atomically under
``output_dir/chunks``; started again after a crash, the same command redoes only the missing
chunks. The main process then writes scored.jsonl (pool order), rejects.jsonl and manifest.json.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path


_HERE = Path(__file__).resolve().parent
# this folder holds select.py, which would shadow the standard library's `select` module
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))  # run from a checkout without installing

from deita_train.config import parse_config, setup_logging  # noqa: E402
from deita_train.scoring import ScoreConfig, score_pool  # noqa: E402


logger = logging.getLogger("data_prep.score")


def main(args: Sequence[str] | None = None) -> dict:
    setup_logging()
    (config,) = parse_config(ScoreConfig, args=args)
    counts = score_pool(config)
    logger.info("wrote %s: %s", config.output_dir, json.dumps(counts))
    return counts


if __name__ == "__main__":
    main()
