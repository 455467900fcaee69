"""Publishing: the dry run writes exactly what a push would send, and the token never lands anywhere."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import uuid
from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

from deita_train import hub, publish
from deita_train.cards import build_dataset_card, build_model_card
from deita_train.jsonl import write_json, write_jsonl
from deita_train.manifest import write_manifest


MODEL_FILES = {
    "README.md",
    "chat_template.jinja",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "manifest.json",
    "train_results.json",
}


@pytest.fixture
def tiny(tiny_mistral) -> Path:
    """The session's tiny Mistral checkpoint (conftest); read-only here."""
    return tiny_mistral


@pytest.fixture
def sentinel(monkeypatch) -> str:
    """A unique token in HF_TOKEN, shaped like a real one; the login cache is out of the picture."""
    token = f"hf_sentinel{uuid.uuid4().hex}"
    monkeypatch.setenv("HF_TOKEN", token)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    return token


@pytest.fixture
def sft_dir(tmp_path, tiny) -> Path:
    """A trainer output folder: the model plus everything that must not be uploaded."""
    out = tmp_path / "sft"
    shutil.copytree(tiny, out)
    write_manifest(
        out / "manifest.json",
        step="sft",
        config={
            "model": {"model_name_or_path": "mistralai/Mistral-7B-v0.1"},
            "script": {"dataset_name": "hkust-nlp/deita-6k-v0"},
            "training": {
                "learning_rate": 2e-5,
                "num_train_epochs": 6,
                "hub_token": "hf_fromTheRecipe0123456789abcdefghijkl",
            },
        },
    )
    write_json(out / "train_results.json", {"train_loss": 1.23})
    (out / "README.md").write_text("---\nlicense: other\n---\n# the trainer's card\n")
    (out / "training_args.bin").write_bytes(b"pickled TrainingArguments")
    (out / "checkpoint-2").mkdir()
    shutil.copy(out / "config.json", out / "checkpoint-2" / "config.json")
    (out / "checkpoint-2" / "optimizer.pt").write_bytes(b"adam state")
    (out / "runs" / "Nov21").mkdir(parents=True)
    (out / "runs" / "Nov21" / "events.out.tfevents.1").write_bytes(b"tb")
    (out / "wandb").mkdir()
    (out / "wandb" / "debug.log").write_text("wandb log")
    return out


@pytest.fixture
def recipe(tmp_path, sentinel) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(
        f"model_name_or_path: mistralai/Mistral-7B-v0.1\ndataset_name: hkust-nlp/deita-6k-v0\nhub_token: {sentinel}\n"
    )
    return path


def sft_card(model_dir: Path, recipe: Path | None = None) -> ModelCard:
    return build_model_card(
        model_dir,
        repo_id="me/deita-tiny-sft",
        kind="sft",
        base_model="mistralai/Mistral-7B-v0.1",
        datasets=["hkust-nlp/deita-6k-v0"],
        recipe_path=recipe,
    )


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_nowhere(secret: str, folder: Path, records: list[logging.LogRecord], *texts: str) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), f"token leaked into {path}"
    for rec in records:
        assert secret not in rec.getMessage() and secret not in str(rec.args), f"token leaked into log: {rec.name}"
    for text in texts:
        assert secret not in text


def test_dry_run_of_tiny_sft_model(tmp_path, sft_dir, recipe, sentinel, caplog):
    """The issue's done-criterion: the dry-run card loads with ModelCard and holds no secret."""
    caplog.set_level(logging.DEBUG)
    card = sft_card(sft_dir, recipe)
    out = tmp_path / "dry"
    assert hub.publish_model(sft_dir, "me/deita-tiny-sft", card=card, dry_run_dir=out) == str(out)

    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert written == MODEL_FILES | {hub.PLAN_FILE}
    plan = json.loads((out / hub.PLAN_FILE).read_text())
    assert plan["repo_id"] == "me/deita-tiny-sft" and plan["repo_type"] == "model" and plan["private"] is False
    assert {f["path"] for f in plan["files"]} == MODEL_FILES
    for f in plan["files"]:
        assert f["size"] == (out / f["path"]).stat().st_size and f["sha256"] == sha256(out / f["path"])
        if f["path"] != "README.md":
            assert f["sha256"] == sha256(sft_dir / f["path"])  # copied, byte for byte

    loaded = ModelCard.load(out / "README.md")
    assert loaded.data.to_dict()["base_model"] == "mistralai/Mistral-7B-v0.1"
    assert "hub_token: <redacted>" in loaded.text
    assert_nowhere(sentinel, out, caplog.records, str(card))
    assert "hf_fromTheRecipe" not in (out / "manifest.json").read_text()  # write_manifest redacted it


def test_dry_run_needs_no_token(tmp_path, tiny, monkeypatch):
    for var in hub.TOKEN_ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    out = hub.publish_model(tiny, "me/x", card=sft_card(tiny), dry_run_dir=tmp_path / "dry")
    assert (Path(out) / "model.safetensors").is_file()
    with pytest.raises(RuntimeError, match="no Hub token"):
        hub.publish_model(tiny, "me/x", card=sft_card(tiny))


class FakeHub:
    """Records HfApi.create_repo / upload_folder calls, and what upload_folder would have sent."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.sent: dict[str, str] = {}

    def install(self, monkeypatch) -> None:
        fake = self

        def create_repo(self, repo_id, **kwargs):
            fake.calls.append(("create_repo", {"repo_id": repo_id, "api_token": self.token, **kwargs}))
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, **kwargs):
            fake.calls.append(("upload_folder", {"api_token": self.token, **kwargs}))
            folder = Path(kwargs["folder_path"])
            files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
            ignore = list(kwargs["ignore_patterns"]) + DEFAULT_IGNORE_PATTERNS  # what upload_folder adds
            for rel in filter_repo_objects(files, allow_patterns=kwargs["allow_patterns"], ignore_patterns=ignore):
                fake.sent[rel] = sha256(folder / rel)

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "upload_folder", upload_folder)


def test_push_sends_the_dry_run_files_and_keeps_the_token_out(
    tmp_path, sft_dir, recipe, sentinel, caplog, monkeypatch
):
    caplog.set_level(logging.DEBUG)
    fake = FakeHub()
    fake.install(monkeypatch)
    card = sft_card(sft_dir, recipe)
    url = hub.publish_model(sft_dir, "me/deita-tiny-sft", card=card, private=True)
    assert url == "https://huggingface.co/me/deita-tiny-sft"
    (name1, create), (name2, upload) = fake.calls
    assert (name1, name2) == ("create_repo", "upload_folder")
    assert create["exist_ok"] is True and create["private"] is True and create["repo_type"] == "model"
    assert create["api_token"] == upload["api_token"] == sentinel  # from HF_TOKEN, handed to HfApi only
    assert upload["repo_id"] == "me/deita-tiny-sft" and upload["repo_type"] == "model"

    dry = Path(hub.publish_model(sft_dir, "me/deita-tiny-sft", card=card, dry_run_dir=tmp_path / "dry", private=True))
    plan = json.loads((dry / hub.PLAN_FILE).read_text())
    assert fake.sent == {f["path"]: f["sha256"] for f in plan["files"]}
    assert upload["allow_patterns"] == plan["allow_patterns"] and upload["ignore_patterns"] == plan["ignore_patterns"]
    assert_nowhere(sentinel, dry, caplog.records, str(card), json.dumps(plan), upload["commit_message"])


def test_resolve_token_order(monkeypatch):
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "from-login")
    for var in hub.TOKEN_ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    assert hub.resolve_token() == "from-login"
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", "from-old-env")
    assert hub.resolve_token() == "from-old-env"
    monkeypatch.setenv("HF_TOKEN", "from-env")
    assert hub.resolve_token() == "from-env"
    assert hub.resolve_token("explicit") == "explicit"
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    for var in hub.TOKEN_ENV_VARS:
        monkeypatch.delenv(var)
    assert hub.resolve_token() is None


def test_a_file_holding_the_token_stops_the_publish(tmp_path, tiny, sentinel, monkeypatch):
    model = tmp_path / "m"
    shutil.copytree(tiny, model)
    write_json(model / "train_results.json", {"note": f"token={sentinel}"})
    FakeHub().install(monkeypatch)
    for dry in (tmp_path / "dry", None):
        with pytest.raises(hub.SecretLeakError) as err:
            hub.publish_model(model, "me/x", card=sft_card(model), dry_run_dir=dry)
        assert "train_results.json" in str(err.value) and sentinel not in str(err.value)
    assert not (tmp_path / "dry").exists()
    # something shaped like some other Hub token in metadata is stopped too
    write_json(model / "train_results.json", {"note": "hf_" + "A1" * 20})
    with pytest.raises(hub.SecretLeakError, match="shaped like a Hub token"):
        hub.publish_model(model, "me/x", card=sft_card(model), dry_run_dir=tmp_path / "dry")


def test_dry_run_folder_rules(tmp_path, tiny):
    card = sft_card(tiny)
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        hub.publish_model(tiny, "me/x", card=card, dry_run_dir=foreign)
    assert (foreign / "keep.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="dry-run folder"):
        hub.publish_model(tiny, "me/x", card=card, dry_run_dir=tiny)
    out = tmp_path / "dry"
    hub.publish_model(tiny, "me/x", card=card, dry_run_dir=out)
    (out / "stale.bin").write_bytes(b"old")
    hub.publish_model(tiny, "me/x", card=card, dry_run_dir=out)  # an earlier dry run is replaced whole
    assert not (out / "stale.bin").exists()


def test_model_folder_must_hold_a_model(tmp_path, tiny):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="no weights"):
        hub.publish_model(empty, "me/x", card=sft_card(tiny), dry_run_dir=tmp_path / "dry")


def selected_records(n: int = 4) -> list[dict]:
    return [
        {
            "id": f"r{i}",
            "conversations": [{"from": "human", "value": f"question {i}"}, {"from": "gpt", "value": f"answer {i}"}],
            "complexity_scores": [3.0 + i / 10],
            "quality_scores": [4.0],
            "deita_score": (3.0 + i / 10) * 4.0,
            "deita_rank": i + 1,
        }
        for i in reversed(range(n))
    ]


def dataset_card(**overrides):
    kwargs = dict(
        repo_id="me/deita-tiny",
        pretty_name="deita tiny",
        source_pools=["local/pool.jsonl"],
        scorer_ids={"complexity": "me/c", "quality": "me/q"},
        embedder_id="mistralai/Mistral-7B-v0.1",
        threshold=0.9,
        budget=4,
        counts={"selected": 4},
    )
    kwargs.update(overrides)
    return build_dataset_card(**kwargs)


def test_dataset_dry_run_layouts(tmp_path, sentinel, caplog):
    caplog.set_level(logging.DEBUG)
    folder = tmp_path / "select"
    write_jsonl(folder / "deita-tiny.jsonl", selected_records())
    write_jsonl(folder / "rejects.jsonl", [{"id": "x", "reason": "empty"}])
    (folder / "embeddings.npy").write_bytes(b"\x93NUMPY")
    write_manifest(folder / "manifest.json", step="select", config={"threshold": 0.9, "openai_api_key": sentinel})

    # a folder keeps its layout (rejects and embeddings stay home); the card must point at a real file
    out = Path(
        hub.publish_dataset(
            folder, "me/deita-tiny", card=dataset_card(data_files="deita-tiny.jsonl"), dry_run_dir=tmp_path / "d1"
        )
    )
    assert {p.name for p in out.iterdir()} == {"README.md", "deita-tiny.jsonl", "manifest.json", hub.PLAN_FILE}
    with pytest.raises(ValueError, match="matches none"):
        hub.publish_dataset(folder, "me/deita-tiny", card=dataset_card(), dry_run_dir=tmp_path / "d2")

    # a single file becomes data/train.jsonl, where the default card points; the snippet loads it
    out = Path(
        hub.publish_dataset(
            folder / "deita-tiny.jsonl", "me/deita-tiny", card=dataset_card(), dry_run_dir=tmp_path / "d3"
        )
    )
    plan = json.loads((out / hub.PLAN_FILE).read_text())
    assert plan["repo_type"] == "dataset" and [f["path"] for f in plan["files"]] == ["README.md", "data/train.jsonl"]
    from datasets import load_dataset

    assert load_dataset(str(out), split="train")["id"] == ["r3", "r2", "r1", "r0"]
    assert_nowhere(sentinel, tmp_path / "d1", caplog.records)


def test_dataset_push_uses_dataset_repo(tmp_path, sentinel, monkeypatch):
    fake = FakeHub()
    fake.install(monkeypatch)
    write_jsonl(tmp_path / "sel.jsonl", selected_records())
    url = hub.publish_dataset([tmp_path / "sel.jsonl"], "me/deita-tiny", card=dataset_card())
    assert url == "https://huggingface.co/me/deita-tiny"
    assert [c[1]["repo_type"] for c in fake.calls] == ["dataset", "dataset"]
    assert set(fake.sent) == {"README.md", "data/train.jsonl"}


def test_cli_model_and_dataset_dry_runs(tmp_path, sft_dir, recipe, sentinel, capsys):
    evals = tmp_path / "mt_bench_summary.json"
    evals.write_text(
        json.dumps(
            {"judge_model": "gpt-4", "models": {"tiny": {"turn_1": 7.0, "turn_2": 6.0, "overall": 6.5, "n_failed": 0}}}
        )
    )
    out = publish.main(
        ["model", "--path", str(sft_dir), "--repo_id", "me/deita-tiny-sft", "--recipe", str(recipe),
         "--eval_results", str(evals), "--dry_run", str(tmp_path / "dm")]
    )  # fmt: skip
    card = ModelCard.load(Path(out) / "README.md")
    meta = card.data.to_dict()
    assert meta["base_model"] == "mistralai/Mistral-7B-v0.1" and meta["datasets"] == ["hkust-nlp/deita-6k-v0"]
    assert "sft" in meta["tags"] and card.data.eval_results[0].dataset_name == "MT-Bench"
    assert "| num_train_epochs | 6 |" in card.text  # resolved values from the training manifest

    folder = tmp_path / "select" / "deita-tiny"
    write_jsonl(folder / "deita-tiny.jsonl", selected_records())
    write_manifest(
        folder / "manifest.json",
        step="select",
        config={"threshold": 0.9, "budget": 4, "score_mode": "sum_product", "complexity_scorer": "me/c",
                "quality_scorer": "me/q", "embedder": "me/emb", "source_pools": ["sharegpt"]},
        counts={"pool": 10, "selected": 4, "rejected_similar": 2},
    )  # fmt: skip
    hist = {"bins": [0.0, 10.0, 20.0], "pool": [6, 4], "selected": [0, 4]}
    write_json(tmp_path / "select" / "selection_stats.json", {"outputs": {"deita-tiny": {"score_histogram": hist}}})
    out = publish.main(
        ["dataset", "--path", str(folder), "--repo_id", "me/deita-tiny", "--dry_run", str(tmp_path / "dd")]
    )
    text = (Path(out) / "README.md").read_text()
    assert "| [10.00, 20.00] | 4 | 4 |" in text and "| rejected_similar | 2 |" in text
    captured = capsys.readouterr()
    assert_nowhere(sentinel, tmp_path / "dm", [], captured.out, captured.err)
    assert_nowhere(sentinel, tmp_path / "dd", [])
