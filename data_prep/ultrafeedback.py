"""Sample UltraFeedback preference pairs for DPO, rendered with the SFT template (vicuna_v1.1).

    python data_prep/ultrafeedback.py --config recipes/data/ultrafeedback-10k.yaml [--key value ...]

Draws ``num_samples`` pairs from ``HuggingFaceH4/ultrafeedback_binarized`` (split ``train_prefs``)
with the original's ``random.seed(42); random.sample(...)``, replaces pairs that fail a check by
walking the same seeded permutation, and writes pairs.jsonl ({id, prompt, chosen, rejected,
score_chosen, score_rejected}), rejects.jsonl and manifest.json into ``output_dir``.
See deita_train/ultrafeedback.py for the checks and the original's lowercase-role bug.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from deita_train.config import parse_config, setup_logging  # noqa: E402
from deita_train.ultrafeedback import UltraFeedbackConfig, sample_ultrafeedback  # noqa: E402


logger = logging.getLogger("data_prep.ultrafeedback")


def main(args: Sequence[str] | None = None) -> dict:
    setup_logging()
    (config,) = parse_config(UltraFeedbackConfig, args=args)
    counts = sample_ultrafeedback(config)
    summary = {k: counts[k] for k in ("sampled", "kept", "rejected", "rejected_by_reason")}
    logger.info("wrote %s: %s", config.output_dir, json.dumps(summary))
    return counts


if __name__ == "__main__":
    main()
