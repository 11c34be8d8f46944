"""Every method x architecture x format through the real CLI: fit -> checkpoint -> load -> predict."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from conftest import FORMATS, data_files_arg, run_cli

import lit_prompts
from lit_prompts.backbone import load_backbone

P = 4  # virtual tokens
METHODS = ("PromptTuning", "PTuning", "PrefixTuning", "PTuningV2")
CASES = [(method, arch, fmt) for method in METHODS for arch, formats in FORMATS.items() for fmt in formats]


def expected_trainable(model) -> dict[str, int]:
    """Trainable tensor name -> size, from each method's formula (L layers, H hidden, H_kv·d per key)."""
    f, layers = model.facts, model.backbone.num_layers
    kv_width = f.num_key_value_heads * f.head_dim
    method = type(model).__name__
    if method == "PromptTuning":
        sizes = {"prompt": P * f.hidden_size}
    elif method == "PTuning":  # embedding [P, H] + MLP H -> H -> H of it (the default: the residual MLP encoder)
        H, encoder = f.hidden_size, "residual_encoder"
        sizes = {"prompt_embedding": P * H, f"{encoder}.mlp.0.weight": H * H, f"{encoder}.mlp.0.bias": H,
                 f"{encoder}.mlp.2.weight": H * H, f"{encoder}.mlp.2.bias": H}
    elif method == "PTuningV2":
        sizes = {"deep_prompts": layers * P * f.hidden_size}
    else:  # PrefixTuning (its default: the plain prefix; through the MLP in test_deep_prompts and test_prefix_init)
        sizes = {"prefix": layers * 2 * kv_width * P}
    sizes = {f"prompt.{name}": size for name, size in sizes.items()}  # the method's prompt module
    if model.hparams.task_format == "head":
        sizes |= {"formats.classification.head.1.weight": f.hidden_size * 2, "formats.classification.head.1.bias": 2}
    return sizes


def method_args(method: str, backbone: str, fmt: str, reviews: dict) -> list[str]:
    args = [
        f"--model={method}",
        f"--model.backbone={backbone}",
        f"--model.num_virtual_tokens={P}",
        f"--data.task_format={fmt}",
        "--data.id_column=id",
        "--data.batch_size=8",
        "--data.max_length=48",
    ]
    # P-tuning places its virtual tokens inside the template, around real anchor words.
    virtual = ("[P:3] ", "[P:1] ") if method == "PTuning" else ("", "")
    if fmt == "cloze":
        args += ["--data.verbalizer={positive: great, negative: bad}",
                 f"--data.template={virtual[0]}{{text}} {virtual[1]}it was {{mask}} ."]
    if fmt == "text_to_text":
        args += [f"--data.template={virtual[0]}review : {{text}} {virtual[1]}sentiment :"]
    return args


@pytest.mark.parametrize("method,arch,fmt", CASES, ids=[f"{m}-{a}-{f}" for m, a, f in CASES])
def test_fit_checkpoint_load_predict(method, arch, fmt, tiny_backbone, reviews, tmp_path):
    backbone = tiny_backbone(arch)
    args = method_args(method, backbone, fmt, reviews)
    cli = run_cli("fit", *args, data_files_arg(reviews), "--trainer.max_epochs=2", root=tmp_path)
    model = cli.model

    # Exactly the prompt-side tensors (and the head, in head format) train; sizes equal the formula.
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == expected_trainable(model)

    # The frozen backbone is bitwise what was loaded from disk.
    fresh = load_backbone(backbone, fmt).state_dict()
    trained = model.backbone.model.state_dict()
    assert trained.keys() == fresh.keys()
    assert all(torch.equal(trained[k], fresh[k]) for k in fresh)

    # The checkpoint holds exactly the trainable tensors, and the loaded method has them.
    best = cli.trainer.checkpoint_callback.best_model_path
    checkpoint = torch.load(best, map_location="cpu", weights_only=True)
    assert set(checkpoint["state_dict"]) == set(trainable)
    assert len(checkpoint["optimizer_states"][0]["state"]) == len(trainable), "optimizer state of every tensor"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = lit_prompts.load(best)
    assert not [w for w in caught if "not in the checkpoint" in str(w.message)], "the frozen backbone is not 'missing'"
    assert type(loaded).__name__ == method
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in checkpoint["state_dict"].items())

    # The exported prompt (best checkpoint's, reparameterisation folded) reloads to the same tensors.
    exported = lit_prompts.load(tmp_path / "lightning_logs" / "version_0" / "prompt")
    folded = loaded.export_tensors()
    assert exported.trainable_state_dict().keys() == folded.keys()
    assert all(torch.equal(exported.trainable_state_dict()[k], v) for k, v in folded.items())

    # predict writes one JSONL row per unlabelled example, with the label set and a probability.
    output = tmp_path / "predictions.jsonl"
    files = {**reviews, "test": reviews["unlabelled"]}
    run_cli("predict", *args, data_files_arg(files), f"--ckpt_path={best}", f"--predictions.output={output}", root=tmp_path)
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    expected_ids = [json.loads(line)["id"] for line in open(reviews["unlabelled"])]
    assert [r["id"] for r in rows] == expected_ids
    assert {r["label"] for r in rows} <= {"positive", "negative"}
    assert all(0.5 <= r["score"] <= 1.0 for r in rows)  # the winning probability of two labels

    if fmt == "text_to_text":  # and free text, generated with the prompt in place
        run_cli("predict", *args, data_files_arg(files), f"--ckpt_path={best}", f"--predictions.output={output}",
                "--model.predict_with=generate", "--model.max_new_tokens=3", "--model.num_beams=2", root=tmp_path)
        rows = [json.loads(line) for line in output.read_text().splitlines()]
        assert [r["id"] for r in rows] == expected_ids
        assert all(isinstance(r["text"], str) for r in rows)
