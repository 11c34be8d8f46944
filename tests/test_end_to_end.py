"""Every architecture x format through the real CLI: fit -> checkpoint -> load -> predict."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import FORMATS, data_files_arg, run_cli

import lit_prompts
from lit_prompts.backbone import load_backbone

P = 4  # virtual tokens
CASES = [(arch, fmt) for arch, formats in FORMATS.items() for fmt in formats]


def method_args(backbone: str, fmt: str, reviews: dict) -> list[str]:
    args = [
        "--model=PromptTuning",
        f"--model.backbone={backbone}",
        f"--model.num_virtual_tokens={P}",
        f"--data.task_format={fmt}",
        "--data.id_column=id",
        "--data.batch_size=8",
        "--data.max_length=48",
    ]
    if fmt == "cloze":
        args += ["--data.verbalizer={positive: great, negative: bad}", "--data.template={text} it was {mask} ."]
    if fmt == "text_to_text":
        args += ["--data.template=review : {text} sentiment :"]
    return args


@pytest.mark.parametrize("arch,fmt", CASES, ids=[f"{a}-{f}" for a, f in CASES])
def test_fit_checkpoint_load_predict(arch, fmt, tiny_backbone, reviews, tmp_path):
    backbone = tiny_backbone(arch)
    args = method_args(backbone, fmt, reviews)
    cli = run_cli("fit", *args, data_files_arg(reviews), "--trainer.max_epochs=2", root=tmp_path)
    model = cli.model
    hidden = model.facts.hidden_size

    # Exactly the prompt (and the head, in head format) trains; the count equals the formula.
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    head = {"head.1.weight", "head.1.bias"} if fmt == "head" else set()
    assert trainable == {"prompt"} | head
    assert sum(p.numel() for p in model.trainable_parameters()) == P * hidden + (hidden * 2 + 2 if head else 0)

    # The frozen backbone is bitwise what was loaded from disk.
    fresh = load_backbone(backbone, fmt).state_dict()
    trained = model.backbone.state_dict()
    assert trained.keys() == fresh.keys()
    assert all(torch.equal(trained[k], fresh[k]) for k in fresh)

    # The checkpoint holds exactly the trainable tensors, and the loaded method has them.
    best = cli.trainer.checkpoint_callback.best_model_path
    checkpoint = torch.load(best, map_location="cpu", weights_only=False)
    assert set(checkpoint["state_dict"]) == trainable
    assert checkpoint["optimizer_states"][0]["state"], "optimizer state of the prompt is saved"
    loaded = lit_prompts.load(best)
    assert type(loaded).__name__ == "PromptTuning"
    assert torch.equal(loaded.prompt, checkpoint["state_dict"]["prompt"])

    # The exported prompt (best checkpoint's) reloads to the same tensors.
    exported = lit_prompts.load(tmp_path / "lightning_logs" / "version_0" / "prompt")
    assert torch.equal(exported.prompt, loaded.prompt)

    # predict writes one JSONL row per unlabelled example, with the label set and a probability.
    output = tmp_path / "predictions.jsonl"
    files = {**reviews, "test": reviews["unlabelled"]}
    run_cli("predict", *args, data_files_arg(files), f"--ckpt_path={best}", f"--predictions.output={output}", root=tmp_path)
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    expected_ids = [json.loads(line)["id"] for line in open(reviews["unlabelled"])]
    assert [r["id"] for r in rows] == expected_ids
    assert {r["label"] for r in rows} <= {"positive", "negative"}
    assert all(0.5 <= r["score"] <= 1.0 for r in rows)  # the winning probability of two labels
