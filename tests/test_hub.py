"""Prompts on the Hugging Face Hub, offline: repos laid out by hand the way ``huggingface_hub`` lays out
its cache (refs, snapshots, blobs), loaded by repo id; model cards; pushes with the Hub's API replaced."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import shutil
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub import CommitInfo, HfApi, ModelCard, constants
from huggingface_hub.errors import LocalTokenNotFoundError
from huggingface_hub.utils import filter_repo_objects
from safetensors.torch import load_file, save_file

import lit_prompts
from lit_prompts.hub import PROMPT_PATTERNS, HubError, model_card, prompt_folder, push_prompt, write_model_card
from lit_prompts.prompted_backbone import PromptedBackbone

LABELS = ["negative", "positive"]
COMMIT_A, COMMIT_B, COMMIT_BACKBONE = "a" * 40, "b" * 40, "c" * 40
TRAINING = {"command": "python -m lit_prompts fit --config configs/prompt_tuning/sst2.yaml", "metric": "val/accuracy",
            "value": 0.8125, "checkpoint": "best.ckpt"}


# --- a Hugging Face cache, by hand ------------------------------------------------------------------------


def put_in_cache(cache: Path, repo: str, folder: Path, commit: str, refs: tuple[str, ...] = ()) -> Path:
    """Lay ``folder``'s files out as ``huggingface_hub`` caches repo ``repo`` at ``commit``: each file a
    blob named by its hash, linked (relative symlink) from ``snapshots/<commit>/``; each ref (branch or
    tag) a file under ``refs/`` holding the commit. Returns the snapshot folder."""
    storage = cache / f"models--{repo.replace('/', '--')}"
    snapshot = storage / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    (storage / "blobs").mkdir(exist_ok=True)
    for file in sorted(p for p in folder.iterdir() if p.is_file()):
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copyfile(file, storage / "blobs" / digest)
        (snapshot / file.name).symlink_to(Path("..", "..", "blobs", digest))
    for ref in refs:
        (storage / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (storage / "refs" / ref).write_text(commit)  # as the library writes it: no newline
    return snapshot


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache for this test, offline. huggingface_hub reads HF_HUB_CACHE and
    HF_HUB_OFFLINE when it is imported: its module attributes (which it, transformers and lit_prompts
    read at each call) are set, and the environment too, for anything that reads that instead."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


@pytest.fixture
def online(monkeypatch):
    """The offline flag off, both where huggingface_hub keeps it and in the environment (pushes are faked)."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)


def export(backbone: str, folder: Path, seed: int, training: dict | None = None) -> Path:
    torch.manual_seed(seed)
    method = lit_prompts.PromptTuning(backbone=backbone, label_names=LABELS, num_virtual_tokens=4)
    method.export_prompt(folder, training=training)
    return folder


@pytest.fixture
def prompts(tiny_backbone, tmp_path) -> tuple[Path, Path]:
    """Two prompts for the tiny BERT that differ in every tensor (other seeds), the first with its training record."""
    backbone = tiny_backbone("bert")
    return export(backbone, tmp_path / "p1", seed=1, training=TRAINING), export(backbone, tmp_path / "p2", seed=2)


@pytest.fixture
def cached_repo(hub_cache, prompts) -> Path:
    """``org/name``: commit A (main) holds the first prompt; commit B (tag ``v2``) the second."""
    put_in_cache(hub_cache, "org/name", prompts[0], COMMIT_A, refs=("main",))
    put_in_cache(hub_cache, "org/name", prompts[1], COMMIT_B, refs=("v2",))
    return hub_cache


def trainable(method) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in method.trainable_state_dict().items()}


@torch.no_grad()
def logits(method) -> torch.Tensor:
    """[2, num_labels] scores of two sentences (one padded)."""
    inputs = method.tokenizer(["the movie was great", "boring plot and bad acting ."], padding=True, return_tensors="pt")
    batch = {**inputs, "label": torch.tensor([1, 0]), "ids": ["a", "b"]}
    task = method.default_task
    return method.formats[task].scores(method.prompted(task), batch)


def assert_same_tensors(a, b) -> None:
    assert set(trainable(a)) == set(trainable(b))
    for name, tensor in trainable(a).items():
        torch.testing.assert_close(tensor, trainable(b)[name], rtol=0, atol=0)


# --- pull -------------------------------------------------------------------------------------------------


def test_a_repo_id_loads_what_the_local_folder_loads(cached_repo, prompts):
    from_hub, local = lit_prompts.load("org/name"), lit_prompts.load(prompts[0])
    assert_same_tensors(from_hub, local)
    torch.testing.assert_close(logits(from_hub), logits(local))
    folder = prompt_folder("org/name")
    assert folder == cached_repo / "models--org--name" / "snapshots" / COMMIT_A
    assert (folder / "prompt.json").is_symlink()  # read through the cache's own links, not copied


@pytest.mark.parametrize("how", ["revision=v2", "@v2", "@commit", "revision=commit"])
def test_a_revision_picks_the_other_commit(cached_repo, prompts, how):
    revision = COMMIT_B if how.endswith("commit") else "v2"
    method = (lit_prompts.load("org/name", revision=revision) if how.startswith("revision=")
              else lit_prompts.load(f"org/name@{revision}"))
    assert_same_tensors(method, lit_prompts.load(prompts[1]))
    first = load_file(prompts[0] / "prompt.safetensors")["prompt.prompt"]
    assert not torch.equal(trainable(method)["prompt.prompt"], first)  # the two commits differ


def test_unknown_repo_or_revision_offline_is_named(cached_repo):
    with pytest.raises(FileNotFoundError, match=r"'org/missing'.*neither a local folder nor in the Hugging Face cache.*HF_HUB_OFFLINE"):
        lit_prompts.load("org/missing")
    with pytest.raises(FileNotFoundError, match=r"'org/name' at revision 'v9'.*cache holds it only at main, v2.*HF_HUB_OFFLINE"):
        lit_prompts.load("org/name@v9")
    with pytest.raises(ValueError, match=r"'org/name@v2' names revision 'v2', and revision='main'"):
        prompt_folder("org/name@v2", revision="main")


def test_a_cached_repo_that_is_not_a_prompt_is_named(hub_cache, tiny_backbone):
    put_in_cache(hub_cache, "org/tiny-bert", Path(tiny_backbone("bert")), COMMIT_BACKBONE, refs=("main",))
    with pytest.raises(FileNotFoundError, match=r"Hub repo 'org/tiny-bert' holds no prompt \(prompt.json"):
        lit_prompts.load("org/tiny-bert")


def test_local_folders_win_over_repo_ids(prompts, tmp_path, monkeypatch):
    assert prompt_folder(prompts[0]) == prompts[0]
    assert prompt_folder(str(prompts[0])) == prompts[0]
    monkeypatch.chdir(tmp_path)
    shutil.copytree(prompts[1], tmp_path / "org" / "local")  # "org/local" exists here: a folder, not a repo
    assert prompt_folder("org/local") == Path("org/local")
    assert_same_tensors(lit_prompts.load("org/local"), lit_prompts.load(prompts[1]))


def test_prompt_library_takes_repo_ids(cached_repo, prompts, tiny_backbone):
    library = lit_prompts.PromptLibrary(prompts={"main": "org/name", "tagged": "org/name@v2"}, backbone=tiny_backbone("bert"))
    assert_same_tensors(library.methods["main"], lit_prompts.load(prompts[0]))
    assert_same_tensors(library.methods["tagged"], lit_prompts.load(prompts[1]))


def test_multitask_init_prompt_takes_a_repo_id(cached_repo, prompts, tiny_backbone):
    specs = {"sentiment": {"task": "classification", "task_format": "head", "label_names": LABELS},
             "topic": {"task": "classification", "task_format": "head", "label_names": ["a", "b", "c"]}}
    model = lit_prompts.MultiTaskPromptTuning(backbone=tiny_backbone("bert"), task_specs=specs, num_virtual_tokens=4,
                                              init_prompt="org/name@v2")
    torch.testing.assert_close(model.prompt.shared_prompt.detach(), load_file(prompts[1] / "prompt.safetensors")["prompt.prompt"])
    with pytest.raises(FileNotFoundError, match=r"init_prompt: prompt 'org/missing'"):
        lit_prompts.MultiTaskPromptTuning(backbone=tiny_backbone("bert"), task_specs=specs, init_prompt="org/missing")


# --- backbones by repo id ---------------------------------------------------------------------------------


def test_a_backbone_loaded_by_repo_id_records_its_commit(hub_cache, tiny_backbone, tmp_path):
    put_in_cache(hub_cache, "org/tiny-bert", Path(tiny_backbone("bert")), COMMIT_BACKBONE, refs=("main",))
    assert PromptedBackbone.load("org/tiny-bert", "head").fingerprint["commit"] == COMMIT_BACKBONE
    export("org/tiny-bert", tmp_path / "p", seed=0)
    card = ModelCard(model_card(json.loads((tmp_path / "p" / "prompt.json").read_text())))
    assert card.data.base_model == "org/tiny-bert"
    assert card.data.lit_prompts["backbone"]["commit"] == COMMIT_BACKBONE
    assert f"commit `{COMMIT_BACKBONE}`" in card.text


@pytest.fixture
def other_weights(tiny_backbone, tmp_path) -> str:
    """The tiny BERT's files with other embedding weights: the same architecture and shapes."""
    folder = Path(shutil.copytree(tiny_backbone("bert"), tmp_path / "other-bert"))
    weights = load_file(folder / "model.safetensors")
    torch.manual_seed(3)
    weights = {k: v + 0.05 * torch.randn_like(v) if "embeddings" in k else v for k, v in weights.items()}
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return str(folder)


def test_a_prompt_on_other_weights_is_refused_unless_allowed(prompts, other_weights, tiny_backbone):
    with pytest.raises(ValueError, match=r"other weights of the same architecture.*allow_other_weights=True"):
        lit_prompts.load(prompts[0], backbone=other_weights)
    names = rf"{re.escape(repr(tiny_backbone('bert')))}.*{re.escape(repr(other_weights))}"
    with pytest.warns(UserWarning, match=names):
        method = lit_prompts.load(prompts[0], backbone=other_weights, allow_other_weights=True)
    torch.testing.assert_close(trainable(method)["prompt.prompt"], trainable(lit_prompts.load(prompts[0]))["prompt.prompt"])


# --- model cards ------------------------------------------------------------------------------------------


def settings_of(folder: Path) -> dict:
    return json.loads((folder / "prompt.json").read_text())


def test_model_card_records_method_backbone_task_and_measurement(prompts, tiny_backbone):
    settings = settings_of(prompts[0])
    card = ModelCard(model_card(settings, repo_id="me/sst2-prompt"))
    data, facts = card.data, card.data.lit_prompts
    assert data.license == "other"
    assert data.library_name == "lit-prompts"
    assert data.tags == ["lit-prompts", "prompt-tuning"]  # the method's own tag is prompt-tuning too
    assert data.base_model is None  # a local folder is no Hub model
    assert data.metrics == ["accuracy"]
    assert facts["method"] == "PromptTuning"
    assert facts["backbone"] == {"name": tiny_backbone("bert"), "commit": None,
                                 "weights_digest": settings["backbone"]["weights_digest"]}
    assert facts["tasks"] == {"classification": {"task": "classification", "task_format": "head", "label_names": LABELS}}
    hidden = settings["backbone"]["hidden_size"]
    assert facts["parameters"] == 4 * hidden + 2 * hidden + 2  # prompt [P, H] + head weight and bias
    assert facts["parameters"] == sum(t.numel() for t in lit_prompts.load(prompts[0]).export_tensors().values())
    assert facts["training"] == {"metric": "val/accuracy", "value": 0.8125, "command": TRAINING["command"]}
    assert TRAINING["command"] in card.text and "| val/accuracy | 0.8125 |" in card.text
    assert 'lit_prompts.load("me/sst2-prompt")' in card.text
    assert settings["backbone"]["weights_digest"] in card.text  # no commit: the digest names the weights
    assert "PeftModel" not in card.text


def test_model_card_of_a_multitask_prompt_lists_each_task(tiny_backbone, tmp_path):
    specs = {"sentiment": {"task": "classification", "task_format": "head", "label_names": LABELS},
             "entities": {"task": "ner", "task_format": "token", "label_names": ["O", "B-PER", "I-PER"]}}
    method = lit_prompts.MultiTaskPromptTuning(backbone=tiny_backbone("bert"), task_specs=specs, num_virtual_tokens=4)
    method.export_prompt(tmp_path / "mpt")
    card = ModelCard(model_card(settings_of(tmp_path / "mpt")))
    assert card.data.lit_prompts["method"] == "MultiTaskPromptTuning"
    assert card.data.tags == ["lit-prompts", "prompt-tuning", "multi-task-prompt-tuning"]
    assert card.data.lit_prompts["tasks"] == {name: {"task": spec["task"], "task_format": spec["task_format"],
                                                     "label_names": spec["label_names"]} for name, spec in specs.items()}
    assert card.data.lit_prompts["parameters"] == sum(t.numel() for t in method.export_tensors().values())
    assert "| task `entities` | ner (format `token`), labels: O, B-PER, I-PER |" in card.text


def test_model_card_without_training_record_says_so(prompts):
    card = ModelCard(model_card(settings_of(prompts[1]), license="apache-2.0"))
    assert card.data.license == "apache-2.0"
    assert card.data.lit_prompts["training"] == "not recorded"
    assert card.data.metrics is None
    assert "not recorded" in card.text


def test_peft_model_card_names_the_base_model_and_peft_loading(prompts, tmp_path):
    settings = settings_of(prompts[0])
    settings["backbone"].update(name="org/tiny-bert@v1", commit=COMMIT_BACKBONE)
    settings["class_path"] = "lit_prompts.training.methods.PTuningV2"
    peft_config = {"peft_type": "PREFIX_TUNING", "task_type": "CAUSAL_LM", "base_model_name_or_path": "org/tiny-bert@v1"}
    card = ModelCard(model_card(settings, peft_config=peft_config, repo_id="me/prefix"))
    assert card.data.library_name == "peft"
    assert card.data.base_model == "org/tiny-bert"
    assert card.data.tags == ["lit-prompts", "prompt-tuning", "p-tuning-v2"]
    assert 'PeftModel.from_pretrained(base, "me/prefix")' in card.text
    assert f'AutoModelForCausalLM.from_pretrained("org/tiny-bert", revision="{COMMIT_BACKBONE}")' in card.text


def test_write_model_card_reads_the_folder(prompts, tmp_path):
    folder = Path(shutil.copytree(prompts[0], tmp_path / "peft"))
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "PROMPT_TUNING", "task_type": "FEATURE_EXTRACTION",
                                                             "base_model_name_or_path": "org/tiny-bert"}))
    path = write_model_card(folder, license="mit", repo_id="me/x")
    assert path == folder / "README.md"
    card = ModelCard.load(path)
    assert (card.data.license, card.data.library_name) == ("mit", "peft")
    assert "AutoModel.from_pretrained" in card.text
    with pytest.raises(FileNotFoundError, match=rf"{re.escape(str(tmp_path))} holds no prompt.json"):
        write_model_card(tmp_path)


# --- push -------------------------------------------------------------------------------------------------


@pytest.fixture
def fake_hub(monkeypatch, online) -> list[tuple[str, dict]]:
    """HfApi's repo creation, branch creation and upload, recorded instead of sent; the upload keeps the
    files its allow_patterns select, as the real one does."""
    calls: list[tuple[str, dict]] = []
    real = {name: inspect.signature(getattr(HfApi, name)) for name in ("create_repo", "create_branch", "upload_folder")}

    def create_repo(self, repo_id, **kwargs):
        real["create_repo"].bind(self, repo_id, **kwargs)  # called as the real method may be
        calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))

    def create_branch(self, repo_id, **kwargs):
        real["create_branch"].bind(self, repo_id, **kwargs)
        calls.append(("create_branch", {"repo_id": repo_id, **kwargs}))

    def upload_folder(self, *, repo_id, folder_path, allow_patterns=None, **kwargs):
        real["upload_folder"].bind(self, repo_id=repo_id, folder_path=folder_path, allow_patterns=allow_patterns, **kwargs)
        files = sorted(p.name for p in Path(folder_path).iterdir() if p.is_file())
        sent = sorted(filter_repo_objects(files, allow_patterns=allow_patterns))
        calls.append(("upload_folder", {"repo_id": repo_id, "files": sent, **kwargs}))
        return CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/{COMMIT_A}", commit_message="m",
                          commit_description="", oid=COMMIT_A)

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_branch", create_branch)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def test_push_uploads_the_prompt_files_and_a_card(fake_hub, prompts, tmp_path):
    folder = Path(shutil.copytree(prompts[0], tmp_path / "to-push"))
    (folder / "best.ckpt").write_bytes(b"not for the Hub")  # a file of the run that must stay here
    url = push_prompt(folder, "me/sst2-prompt", private=True, license="apache-2.0")
    assert url == f"https://huggingface.co/me/sst2-prompt/commit/{COMMIT_A}"
    (_, created), (_, uploaded) = fake_hub
    assert created == {"repo_id": "me/sst2-prompt", "exist_ok": True, "private": True, "token": None}
    assert uploaded["repo_id"] == "me/sst2-prompt" and uploaded["revision"] is None
    assert uploaded["files"] == ["README.md", "prompt.json", "prompt.safetensors"]
    card = ModelCard.load(folder / "README.md")
    assert card.data.license == "apache-2.0" and 'lit_prompts.load("me/sst2-prompt")' in card.text
    assert set(PROMPT_PATTERNS) >= set(uploaded["files"])


def test_push_to_a_branch_creates_it_and_keeps_an_existing_card(fake_hub, prompts, tmp_path):
    folder = Path(shutil.copytree(prompts[0], tmp_path / "to-push"))
    (folder / "README.md").write_text("my own card\n")
    push_prompt(folder, "me/sst2-prompt", revision="v2", token="hf_x", commit_message="second try")
    assert [name for name, _ in fake_hub] == ["create_repo", "create_branch", "upload_folder"]
    assert fake_hub[1][1] == {"repo_id": "me/sst2-prompt", "branch": "v2", "exist_ok": True, "token": "hf_x"}
    assert fake_hub[2][1]["revision"] == "v2" and fake_hub[2][1]["commit_message"] == "second try"
    assert (folder / "README.md").read_text() == "my own card\n"


def test_push_failures_name_the_repo_and_what_to_do(prompts, tmp_path, monkeypatch, online):
    folder = Path(shutil.copytree(prompts[0], tmp_path / "to-push"))

    def not_logged_in(self, repo_id, **kwargs):
        raise LocalTokenNotFoundError("Token is required")

    monkeypatch.setattr(HfApi, "create_repo", not_logged_in)
    with pytest.raises(HubError, match=r"cannot push .*to-push to Hub repo 'me/x': not logged in: run `hf auth login`"):
        push_prompt(folder, "me/x")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # set after huggingface_hub was imported: still honoured
    with pytest.raises(OSError, match=r"Hub repo 'me/x': HF_HUB_OFFLINE is set"):
        push_prompt(folder, "me/x")


def test_an_offline_push_is_refused_before_the_hub_is_asked(hub_cache, prompts, monkeypatch):
    monkeypatch.setattr(HfApi, "create_repo", lambda *a, **k: pytest.fail("the Hub was asked"))
    with pytest.raises(HubError, match=r"'me/x': HF_HUB_OFFLINE is set"):
        push_prompt(prompts[0], "me/x")


def test_a_damaged_folder_is_not_pushed(fake_hub, prompts, tmp_path):
    folder = Path(shutil.copytree(prompts[0], tmp_path / "damaged"))
    (folder / "prompt.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="prompt.safetensors is missing"):
        push_prompt(folder, "me/x")
    assert fake_hub == []


def test_huggingface_hub_reads_its_cache_location_from_its_module_at_each_call(hub_cache):
    """What the hub_cache fixture relies on (and lit_prompts.hub's docstring says)."""
    assert huggingface_hub.constants.HF_HUB_CACHE == str(hub_cache) == os.environ["HF_HUB_CACHE"]
    with pytest.raises(FileNotFoundError, match=re.escape(str(hub_cache))):
        prompt_folder("org/nowhere")
