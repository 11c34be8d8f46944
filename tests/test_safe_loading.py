"""Shared files are untrusted: loading a prompt folder or a checkpoint never runs code it names,
and a damaged, altered or mismatched file is refused with its path."""

from __future__ import annotations

import json
import os
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import data_files_arg, run_cli
from safetensors.torch import load_file, save_file
from tiny_backbones import build_tiny_backbone

import lit_prompts
from lit_prompts.loading import UntrustedClassError


@pytest.fixture(scope="module")
def trained(tiny_backbone, reviews, tmp_path_factory) -> Path:
    """A finished one-epoch run: its version folder (checkpoints/ and the exported prompt/)."""
    root = tmp_path_factory.mktemp("trained")
    run_cli("fit", "--model=PromptTuning", f"--model.backbone={tiny_backbone('bert')}", "--model.num_virtual_tokens=2",
            "--data.batch_size=8", data_files_arg(reviews), "--trainer.max_epochs=1", root=root)
    return root / "lightning_logs" / "version_0"


def exported_copy(trained: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(trained / "prompt", tmp_path / "prompt"))


def edit_settings(folder: Path, **changes) -> None:
    path = folder / "prompt.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_prompt_json_naming_a_callable_does_not_run_it(trained, tmp_path):
    folder, marker = exported_copy(trained, tmp_path), tmp_path / "marker"
    for class_path, init_args in [("subprocess.run", {"args": ["touch", str(marker)]}),
                                  ("os.system", {"command": f"touch {marker}"})]:
        edit_settings(folder, class_path=class_path, init_args=init_args)
        with pytest.raises(UntrustedClassError, match=rf"names class '{class_path}', which is not a lit_prompts method"):
            lit_prompts.load(folder)
        assert not marker.exists()


def test_pickled_payload_in_a_checkpoint_does_not_run(trained, tmp_path, capsys):
    marker = tmp_path / "marker"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    checkpoint = torch.load(next((trained / "checkpoints").glob("best-*.ckpt")), weights_only=True)
    checkpoint["lit_prompts"]["payload"] = Payload()
    torch.save(checkpoint, tmp_path / "evil.ckpt")
    with pytest.raises(ValueError, match=r"evil.ckpt holds a Python object .*\(posix.system\); it is refused"):
        lit_prompts.load(tmp_path / "evil.ckpt")
    assert not marker.exists()
    # The command line refuses it too, in one line.
    with pytest.raises(SystemExit):
        run_cli("validate", "--model=PromptTuning", f"--model.backbone={checkpoint['lit_prompts']['backbone']['name']}",
                f"--ckpt_path={tmp_path / 'evil.ckpt'}", root=tmp_path)
    assert "evil.ckpt holds a Python object" in capsys.readouterr().err
    assert not marker.exists()


def test_a_known_method_loads_and_predicts_as_trained(trained, tmp_path):
    from_folder = lit_prompts.load(exported_copy(trained, tmp_path))
    from_checkpoint = lit_prompts.load(next((trained / "checkpoints").glob("best-*.ckpt")))
    assert torch.equal(from_folder.prompt.prompt, from_checkpoint.prompt.prompt)
    settings = json.loads((trained / "prompt" / "prompt.json").read_text())
    assert len(settings["tensors_sha256"]) == 64 and len(settings["backbone"]["weights_digest"]) == 16


@pytest.mark.parametrize(
    "damage,message",
    [
        ("truncate", r"prompt.safetensors cannot be read \(truncated or not a safetensors file\)"),
        ("rename", r"prompt.safetensors holds tensors \{.*'renamed'.* records .*: the two files do not belong together"),
        ("reshape", r"prompt.safetensors holds tensors .*\[1, .* records"),
        ("alter", r"prompt.safetensors does not match the checksum in prompt.json"),
        ("nan", r"prompt.safetensors does not match the checksum"),
        ("settings", r"prompt.json is not valid JSON"),
        ("no-settings", r"is not an exported prompt: prompt.json is missing"),
    ],
)
def test_damaged_prompt_folder_is_refused_with_its_path(trained, tmp_path, damage, message):
    folder = exported_copy(trained, tmp_path)
    tensors_path, tensors = folder / "prompt.safetensors", load_file(folder / "prompt.safetensors")
    if damage == "truncate":
        tensors_path.write_bytes(tensors_path.read_bytes()[:100])
    elif damage == "rename":
        save_file({"renamed": tensors.pop("prompt.prompt"), **tensors}, tensors_path)
    elif damage == "reshape":
        save_file({**tensors, "prompt.prompt": tensors["prompt.prompt"][:1]}, tensors_path)
    elif damage == "alter":
        save_file({**tensors, "prompt.prompt": tensors["prompt.prompt"] + 1e-3}, tensors_path)
    elif damage == "nan":
        save_file({**tensors, "prompt.prompt": torch.full_like(tensors["prompt.prompt"], float("nan"))}, tensors_path)
    elif damage == "settings":
        (folder / "prompt.json").write_text("{not json")
    else:
        (folder / "prompt.json").unlink()
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        lit_prompts.load(folder)


def test_tensors_that_do_not_fit_the_settings_are_refused(trained, tmp_path):
    # Both files agree (consistent checksum), but the settings build a method of another shape: the
    # method's and its exported prompt module's (which the tensors load into) both say 5 vectors.
    folder = exported_copy(trained, tmp_path)
    settings = json.loads((folder / "prompt.json").read_text())
    prompt = {**settings["prompt"], "settings": {**settings["prompt"]["settings"], "length": 5}}
    edit_settings(folder, init_args={**settings["init_args"], "num_virtual_tokens": 5}, prompt=prompt)
    with pytest.raises(ValueError, match=r"tensor 'prompt\.prompt' has shape \(2, .*needs \(5, "):
        lit_prompts.load(folder)


def test_hub_attention_kernel_in_a_prompt_file_is_refused(trained, tmp_path):
    folder = exported_copy(trained, tmp_path)
    settings = json.loads((folder / "prompt.json").read_text())
    edit_settings(folder, init_args={**settings["init_args"], "attn_implementation": "someone/kernel"})
    with pytest.raises(UntrustedClassError, match="attention kernel 'someone/kernel', code from the Hub"):
        lit_prompts.load(folder)


def test_prompt_on_other_weights_of_the_same_architecture_is_refused(trained, tmp_path, monkeypatch):
    other = build_tiny_backbone("bert", tmp_path / "other-bert")
    model = lit_prompts.load(trained / "prompt").backbone.model
    with torch.no_grad():  # the same architecture and shape, other weights: a fine-tuned copy
        for p in model.parameters():
            p.add_(0.01)
    model.save_pretrained(other)
    with pytest.raises(ValueError, match=r"trained on backbone .*bert0' \(weights digest \w{16}\), but .*other-bert' \(weights digest \w{16}\) has other weights"):
        lit_prompts.load(trained / "prompt", backbone=str(other))
    assert lit_prompts.load(trained / "prompt", backbone=str(other), allow_other_weights=True).prompt.prompt.shape[0] == 2
    monkeypatch.setenv("LIT_PROMPTS_ALLOW_OTHER_BACKBONE", "1")
    assert lit_prompts.load(next((trained / "checkpoints").glob("best-*.ckpt")), backbone=str(other)) is not None


def test_same_weights_in_bfloat16_have_the_same_digest(trained):
    method = lit_prompts.load(trained / "prompt", backbone_dtype="bfloat16")
    assert method.backbone.model.dtype == torch.bfloat16  # and check_backbone accepted it: digests agree


def test_out_of_tree_method_needs_trust_or_an_entry_point(trained, tmp_path, monkeypatch):
    package = tmp_path / "site" / "my_methods"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent(
        """
        from lit_prompts import PromptTuning

        class MyPromptTuning(PromptTuning):
            pass
        """
    ))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    folder = exported_copy(trained, tmp_path)
    edit_settings(folder, class_path="my_methods.MyPromptTuning")
    with pytest.raises(UntrustedClassError, match="my_methods.MyPromptTuning"):
        lit_prompts.load(folder)
    assert "my_methods" not in sys.modules  # refused before anything was imported
    assert type(lit_prompts.load(folder, trust_code=True)).__name__ == "MyPromptTuning"
    # An installed package that registers the method under the entry point needs no trust flag.
    info = tmp_path / "site" / "my_methods-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-methods\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[lit_prompts.methods]\nMyPromptTuning = my_methods:MyPromptTuning\n")
    assert type(lit_prompts.load(folder)).__name__ == "MyPromptTuning"
    # Trusted or not, a class that is no prompt method is refused before it is called.
    edit_settings(folder, class_path="collections.OrderedDict")
    with pytest.raises(UntrustedClassError, match="not a PromptMethod subclass"):
        lit_prompts.load(folder, trust_code=True)


def test_validate_from_a_checkpoint_with_the_backbone_elsewhere(trained, reviews, tiny_backbone, tmp_path):
    # The label set comes from the checkpoint (no training file), and a copy of the backbone in
    # another folder is accepted: same architecture, same weights digest.
    copy = shutil.copytree(tiny_backbone("bert"), tmp_path / "moved-bert")
    cli = run_cli("validate", "--model=PromptTuning", f"--model.backbone={copy}",
                  f"--data.data_files={json.dumps({'validation': reviews['validation']})}",
                  f"--ckpt_path={next((trained / 'checkpoints').glob('best-*.ckpt'))}", root=tmp_path)
    assert cli.model.hparams.backbone == str(copy) and cli.model.hparams.label_names == ["negative", "positive"]
    assert 0 <= cli.trainer.callback_metrics["val/accuracy"] <= 1


@pytest.mark.parametrize("settings", [{"length": -1, "hidden_size": 4}, {"length": "x", "hidden_size": 4}, {"bogus": 1}])
def test_prompt_settings_that_build_no_module_are_refused_naming_the_folder(settings, tmp_path):
    from safetensors.torch import save_file

    from lit_prompts.safe_reading import tensors_sha256

    tensors = {"prompt.prompt": torch.zeros(2, 4)}
    save_file(tensors, tmp_path / "prompt.safetensors")
    (tmp_path / "prompt.json").write_text(json.dumps({
        "class_path": "lit_prompts.training.methods.PromptTuning", "format_version": 2, "init_args": {}, "backbone": {},
        "prompt": {"class_path": "lit_prompts.methods.prompt_tuning.SoftPrompt", "settings": settings},
        "tensors": {"prompt.prompt": [2, 4]}, "tensors_sha256": tensors_sha256(tensors)}))
    with pytest.raises(ValueError, match=f"prompt folder {tmp_path}: prompt settings .* do not build SoftPrompt"):
        lit_prompts.load_prompt(tmp_path)


@pytest.mark.parametrize("field, value, message", [
    ("lit_prompts", [1], "field 'lit_prompts' must be a dict, not list"),
    ("hyper_parameters", "lr", "field 'hyper_parameters' must be a dict, not str"),
    ("optimizer_states", {"param_groups": []}, "field 'optimizer_states' must be a list of optimizer states"),
    ("optimizer_states", [{"param_groups": 3}], "field 'optimizer_states' must be a list of optimizer states"),
])
def test_checkpoint_with_a_malformed_part_is_refused_naming_the_field(field, value, message, tmp_path):
    from lit_prompts.safe_reading import read_checkpoint

    torch.save({"state_dict": {}, field: value}, tmp_path / "odd.ckpt")
    with pytest.raises(ValueError, match=f"checkpoint {tmp_path / 'odd.ckpt'}: {message}"):
        read_checkpoint(tmp_path / "odd.ckpt")
    torch.save({"state_dict": {}, "optimizer_states": [{"param_groups": [{}], "state": {}}]}, tmp_path / "fine.ckpt")
    assert read_checkpoint(tmp_path / "fine.ckpt")["optimizer_states"][0]["param_groups"] == [{}]
