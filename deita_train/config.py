"""Recipe parsing for every runnable step: `--config recipe.yaml` plus `--key value` overrides.

This is TRL's `TrlParser` (the same parser the SFT and DPO entry points use), so a data step and a
training step read recipes the same way: YAML values become defaults, command-line values win, and
an unknown key in either place is an error rather than a silently ignored typo.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any

from trl import TrlParser


def parse_config(*dataclass_types: type, args: Sequence[str] | None = None) -> tuple[Any, ...]:
    """Parse `--config path.yaml --key value ...` into instances of `dataclass_types` (unknown keys raise)."""
    parser = TrlParser(dataclass_types, allow_abbrev=False)
    return tuple(
        parser.parse_args_and_config(args=list(args) if args is not None else None, fail_with_unknown_args=True)
    )


def setup_logging(level: int = logging.INFO) -> None:
    """One log format for every step; progress bars go to stderr through tqdm."""
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        level=level,
        stream=sys.stderr,
        force=True,
    )
