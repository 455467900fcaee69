"""Shared fixtures: offline everywhere, the real reference data when present, one tiny checkpoint per session."""

import os
from pathlib import Path

import pytest


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "offline")


def shared_data_dir() -> Path:
    """../shared/data beside the checkout (or $DEITA_SHARED_DATA); a user's clone may not have it."""
    env = os.environ.get("DEITA_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"reference data not present at {path}")
    return path


@pytest.fixture(scope="session")
def tiny_mistral(tmp_path_factory) -> Path:
    from deita_train.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "mistral", arch="mistral")


@pytest.fixture(scope="session")
def mistral_tokenizer(tiny_mistral):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_mistral)
