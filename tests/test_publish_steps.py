"""The training and selection steps publish through deita_train.hub (card, plan, secret scan), never the Trainer's push."""

from __future__ import annotations

import hashlib
import json
import sys
import uuid
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import transformers
from huggingface_hub import DatasetCard, HfApi, ModelCard
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

from deita_train import hub, publish, sft
from deita_train.embedding import save_embeddings
from deita_train.jsonl import write_jsonl
from deita_train.select_step import SelectConfig, run_selection
from deita_train.training import take_over_hub_push


ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "tiny" / "sft.yaml"
SFT_DATA = ROOT / "recipes" / "tiny" / "data" / "sft.jsonl"

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture
def sentinel(monkeypatch) -> str:
    """A unique token in HF_TOKEN, shaped like a real one; the login cache is out of the picture."""
    token = f"hf_sentinel{uuid.uuid4().hex}"
    monkeypatch.setenv("HF_TOKEN", token)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    return token


@pytest.fixture
def no_token(monkeypatch) -> None:
    for var in hub.TOKEN_ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)


@pytest.fixture
def trainer_push_forbidden(monkeypatch) -> list[str]:
    """Every way the Trainer (or TRL) would talk to the Hub or write its own card; a call is recorded."""
    calls: list[str] = []

    def forbid(name):
        def method(self, *args, **kwargs):
            calls.append(name)
            raise AssertionError(f"Trainer.{name} must not be called: publishing goes through deita_train.hub")

        return method

    for name in ("push_to_hub", "init_hf_repo", "_push_from_checkpoint", "create_model_card"):
        monkeypatch.setattr(transformers.Trainer, name, forbid(name))
    import trl.trainer.base_trainer

    monkeypatch.setattr(trl.trainer.base_trainer._BaseTrainer, "create_model_card", forbid("create_model_card"))
    return calls


class FakeHub:
    """Records HfApi.create_repo / upload_folder, and the bytes upload_folder would have sent (no network)."""

    def __init__(self, monkeypatch) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.sent: list[dict[str, bytes]] = []
        fake = self

        def create_repo(api, repo_id, **kwargs):
            fake.calls.append(("create_repo", {"repo_id": repo_id, "api_token": api.token, **kwargs}))
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(api, **kwargs):
            fake.calls.append(("upload_folder", {"api_token": api.token, **kwargs}))
            folder = Path(kwargs["folder_path"])
            files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
            ignore = list(kwargs["ignore_patterns"]) + DEFAULT_IGNORE_PATTERNS
            chosen = filter_repo_objects(files, allow_patterns=kwargs["allow_patterns"], ignore_patterns=ignore)
            fake.sent.append({rel: (folder / rel).read_bytes() for rel in chosen})

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "upload_folder", upload_folder)


def assert_nowhere(secret: str, *places: Path | str) -> None:
    for place in places:
        if isinstance(place, Path):
            for path in place.rglob("*"):
                if path.is_file():
                    assert secret.encode() not in path.read_bytes(), f"token leaked into {path}"
        else:
            assert secret not in place, "token leaked into the log"


def run_sft_cli(monkeypatch, tiny: Path, out: Path, *extra: str):
    """`python -m deita_train.sft --config recipes/tiny/sft.yaml ...` in-process (sys.argv as the shell gives it)."""
    argv = ["sft.py", "--config", str(RECIPE), "--model_name_or_path", str(tiny), "--dataset_name", str(SFT_DATA)]
    argv += ["--output_dir", str(out), "--max_steps", "1", "--save_strategy", "no", "--max_samples", "4", *extra]
    monkeypatch.setattr(sys, "argv", argv)
    return sft.main()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


def test_sft_dry_run_writes_the_project_card_and_plan(
    tiny_mistral, tmp_path, monkeypatch, sentinel, trainer_push_forbidden, capfd
):
    fake = FakeHub(monkeypatch)
    out, dry = tmp_path / "sft", tmp_path / "dry"
    result = run_sft_cli(monkeypatch, tiny_mistral, out, "--publish_dry_run", str(dry))
    assert result.published == str(dry)
    assert fake.calls == [] and trainer_push_forbidden == []  # a dry run sends nothing

    plan = json.loads((dry / hub.PLAN_FILE).read_text())
    assert plan["repo_id"] == "local/sft" and plan["repo_type"] == "model"  # no hub_model_id: local/<output_dir>
    planned = {f["path"] for f in plan["files"]}
    assert {"README.md", "model.safetensors", "config.json", "tokenizer.json", "manifest.json"} <= planned
    assert "training_args.bin" not in planned and (out / "training_args.bin").is_file()
    assert {p.relative_to(dry).as_posix() for p in dry.rglob("*") if p.is_file()} == planned | {hub.PLAN_FILE}
    for f in plan["files"]:
        assert f["sha256"] == sha256((dry / f["path"]).read_bytes())

    card = ModelCard.load(dry / "README.md")
    assert {"deita", "sft"} <= set(card.data.tags)
    # the recipe comes from the --config the manifest recorded, inlined; values are the run's own
    assert "## Training recipe" in card.text and "sft.yaml" in card.text
    assert "| max_steps | 1 |" in card.text
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["training"]["push_to_hub"] is False
    assert manifest["config"]["training"]["publish_dry_run"] == str(dry)
    logs = capfd.readouterr()
    assert "dry run" in logs.err
    assert_nowhere(sentinel, dry, out, logs.out, logs.err)


def test_sft_push_to_hub_uploads_through_deita_hub_not_the_trainer(
    tiny_mistral, tmp_path, monkeypatch, sentinel, trainer_push_forbidden, capfd
):
    fake = FakeHub(monkeypatch)
    out = tmp_path / "sft"
    result = run_sft_cli(
        monkeypatch,
        tiny_mistral,
        out,
        "--push_to_hub",
        "true",
        "--hub_model_id",
        "org/x",
        "--hub_private_repo",
        "true",
    )
    assert result.published == "https://huggingface.co/org/x"
    assert trainer_push_forbidden == []
    (name1, create), (name2, upload) = fake.calls
    assert (name1, name2) == ("create_repo", "upload_folder")
    assert create["repo_id"] == upload["repo_id"] == "org/x" and create["repo_type"] == "model"
    assert create["private"] is True
    assert create["api_token"] == upload["api_token"] == sentinel  # from HF_TOKEN, to HfApi only
    (sent,) = fake.sent
    # what went up is exactly the plan a dry run of the same folder shows
    dry = Path(publish.publish_trained_model(out, "org/x", dry_run_dir=tmp_path / "dry", private=True))
    plan = json.loads((dry / hub.PLAN_FILE).read_text())
    assert {k: sha256(v) for k, v in sent.items()} == {f["path"]: f["sha256"] for f in plan["files"]}
    assert upload["allow_patterns"] == plan["allow_patterns"]
    card = ModelCard(sent["README.md"].decode())
    assert "sft" in card.data.tags and 'model_id = "org/x"' in card.text
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["training"]["push_to_hub"] is True  # the recipe's value, though the Trainer ran without
    assert manifest["config"]["training"]["hub_model_id"] == "org/x"
    logs = capfd.readouterr()
    assert "published https://huggingface.co/org/x" in logs.err
    assert_nowhere(sentinel, out, dry, logs.out, logs.err, upload["commit_message"])
    for files in fake.sent:
        assert all(sentinel.encode() not in data for data in files.values())


def _training_args(tmp_path: Path, *extra: str):
    _, args, _ = sft.parse_args(
        ["--config", str(RECIPE), "--output_dir", str(tmp_path / "out"), "--dataset_name", str(SFT_DATA), *extra]
    )
    return args


def test_publishing_problems_stop_before_training(tmp_path, no_token):
    with pytest.raises(ValueError, match="hub_model_id"):
        take_over_hub_push(_training_args(tmp_path, "--push_to_hub", "true"))
    with pytest.raises(RuntimeError, match="no Hub token"):
        take_over_hub_push(_training_args(tmp_path, "--push_to_hub", "true", "--hub_model_id", "org/x"))
    with pytest.raises(ValueError, match="inside output_dir"):
        take_over_hub_push(_training_args(tmp_path, "--publish_dry_run", str(tmp_path / "out" / "dry")))
    with pytest.raises(ValueError, match="not a valid Hub repo id"):
        take_over_hub_push(_training_args(tmp_path, "--publish_dry_run", "d", "--hub_model_id", "a/b/c"))
    # a dry run needs no token; the Trainer's own push is switched off and the request kept
    args = _training_args(tmp_path, "--push_to_hub", "true", "--hub_model_id", "org/x", "--publish_dry_run", "d")
    request = take_over_hub_push(args)
    assert (request.repo_id, request.dry_run_dir, request.push) == ("org/x", "d", True)
    assert args.push_to_hub is False and take_over_hub_push(args) is request
    assert take_over_hub_push(_training_args(tmp_path)) is None


# ----------------------------------------------------------------------------------------------
# Selection
# ----------------------------------------------------------------------------------------------


def _selection_case(root: Path, **overrides) -> SelectConfig:
    gen = np.random.default_rng(0)
    rows = [
        {
            "id": f"r{i:02d}",
            "conversations": [{"from": "human", "value": f"question {i}"}, {"from": "gpt", "value": f"answer {i}"}],
            "complexity_scores": [float(gen.uniform(1, 6))],
            "quality_scores": [float(gen.uniform(1, 6))],
        }
        for i in range(12)
    ]
    write_jsonl(root / "scored.jsonl", rows)
    save_embeddings(root / "emb", [r["id"] for r in rows], gen.normal(size=(12, 8)).astype(np.float16))
    args = {
        "scored_path": str(root / "scored.jsonl"),
        "embeddings_dir": str(root / "emb"),
        "output_dir": str(root / "out"),
        "budgets": [3, 6],
        "complexity_scorer": "hkust-nlp/deita-complexity-scorer",
        "quality_scorer": "hkust-nlp/deita-quality-scorer",
        "embedder": "mistralai/Mistral-7B-v0.1",
        **overrides,
    }
    return SelectConfig(**args)


def test_selection_dry_run_writes_one_folder_per_budget(tmp_path, no_token):
    dry = tmp_path / "dry"
    counts = run_selection(_selection_case(tmp_path, publish_dry_run=str(dry), hub_org="me"))
    assert counts["published"] == {"deita-3": str(dry / "deita-3"), "deita-6": str(dry / "deita-6")}
    assert sorted(p.name for p in dry.iterdir()) == ["deita-3", "deita-6"]
    for name, n in (("deita-3", 3), ("deita-6", 6)):
        folder, out = dry / name, tmp_path / "out" / name
        plan = json.loads((folder / hub.PLAN_FILE).read_text())
        assert plan["repo_id"] == f"me/{name}" and plan["repo_type"] == "dataset"
        assert {f["path"] for f in plan["files"]} == {"README.md", f"{name}.jsonl", "manifest.json"}
        assert (folder / f"{name}.jsonl").read_bytes() == (out / f"{name}.jsonl").read_bytes()
        assert (folder / "README.md").read_text() == (out / "README.md").read_text()  # the card the step built
        card = DatasetCard.load(folder / "README.md")
        assert f"| selected | {n} |" in card.text
        assert "publish_dry_run" not in card.text and "push_to_hub" not in card.text  # not selection settings


def test_selection_push_uses_hub_org_and_the_dataset_cards(tmp_path, monkeypatch, sentinel):
    fake = FakeHub(monkeypatch)
    counts = run_selection(_selection_case(tmp_path, push_to_hub=True, hub_org="me", hub_private_repo=True))
    assert counts["published"] == {
        "deita-3": "https://huggingface.co/me/deita-3",
        "deita-6": "https://huggingface.co/me/deita-6",
    }
    creates = [c for name, c in fake.calls if name == "create_repo"]
    assert [(c["repo_id"], c["repo_type"], c["private"]) for c in creates] == [
        ("me/deita-3", "dataset", True),
        ("me/deita-6", "dataset", True),
    ]
    assert all(c["api_token"] == sentinel for _, c in fake.calls)
    assert [sorted(s) for s in fake.sent] == [
        ["README.md", "deita-3.jsonl", "manifest.json"],
        ["README.md", "deita-6.jsonl", "manifest.json"],
    ]
    assert fake.sent[1]["README.md"] == (tmp_path / "out" / "deita-6" / "README.md").read_bytes()
    assert_nowhere(sentinel, tmp_path / "out")


def test_selection_publishing_is_checked_before_selecting(tmp_path, no_token):
    with pytest.raises(ValueError, match="needs hub_org"):
        _selection_case(tmp_path, push_to_hub=True)
    with pytest.raises(RuntimeError, match="no Hub token"):
        run_selection(_selection_case(tmp_path, push_to_hub=True, hub_org="me"))
    with pytest.raises(ValueError, match="inside output_dir"):
        run_selection(_selection_case(tmp_path, publish_dry_run=str(tmp_path / "out" / "dry")))
    assert not (tmp_path / "out").exists()
