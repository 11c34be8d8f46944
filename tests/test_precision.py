"""Half-precision and quantized backbones, and the attention kernels deep prompts can use."""

from __future__ import annotations

import pytest
import torch
from conftest import data_files_arg, run_cli

import lit_prompts
from lit_prompts.backbone import quantization_config
from lit_prompts.cli import main
from lit_prompts.training.methods import PromptTuning, PTuningV2


def test_a_float16_backbone_trains_a_float32_prompt_that_serves_on_float32(tiny_backbone, reviews, tmp_path):
    llama = tiny_backbone("llama")
    cli = run_cli("fit", "--model=PTuningV2", f"--model.backbone={llama}", "--model.backbone_dtype=float16",
                  "--model.num_virtual_tokens=2", data_files_arg(reviews), "--trainer.max_steps=3", root=tmp_path)
    model = cli.model
    assert model.backbone.model.dtype == torch.float16
    assert all(p.dtype == torch.float32 for p in model.trainable_parameters())
    assert all(torch.isfinite(p).all() for p in model.trainable_parameters())
    folder = tmp_path / "lightning_logs" / "version_0" / "prompt"
    # The same weights in another dtype: the digests differ, the embedding samples agree.
    served = lit_prompts.load(folder, backbone_dtype="float32")
    assert served.backbone.model.dtype == torch.float32
    assert served.fingerprint["weights_digest"] != model.fingerprint["weights_digest"]
    batch = {"input_ids": torch.tensor([[5, 6, 7, 8]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    half_served = lit_prompts.load(folder)  # the exported (best) prompt on the float16 backbone it trained on
    assert half_served.backbone.model.dtype == torch.float16
    half = half_served.formats["classification"].scores(half_served.prompted("classification"), batch)
    full = served.formats["classification"].scores(served.prompted("classification"), batch)
    assert torch.allclose(half, full, atol=1e-2)
    # Other weights in another dtype are still refused.
    other = tiny_backbone("gpt2")
    with pytest.raises(ValueError, match="differs from|other weights"):
        lit_prompts.load(folder, backbone=other, backbone_dtype="float32")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a platform without CUDA")
@pytest.mark.parametrize("bits", ["4bit", "8bit"])
def test_quantization_without_a_gpu_names_the_platform_and_the_option(bits, tiny_backbone):
    with pytest.raises(ValueError, match=rf"quantization='{bits}'.*needs a CUDA GPU.*torch .*model.init_args.quantization"):
        quantization_config(bits, "float32")
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        PromptTuning(backbone=tiny_backbone("llama"), label_names=["a", "b"], quantization=bits)
    with pytest.raises(ValueError, match="not one of"):
        quantization_config("3bit", "float32")


def test_a_kernel_that_cannot_take_a_prefix_is_named_with_the_ones_that_can(tiny_backbone):
    refused = r"'flex_attention', which cannot take a prefix.*attn_implementation: sdpa"
    with pytest.raises(ValueError, match=refused):  # the start from real words reads the kernels: refused when built
        PTuningV2(backbone=tiny_backbone("llama"), label_names=["a", "b"], num_virtual_tokens=2,
                  attn_implementation="flex_attention")
    model = PTuningV2(backbone=tiny_backbone("llama"), label_names=["a", "b"], num_virtual_tokens=2, init="vocab",
                      attn_implementation="flex_attention")
    ids = torch.tensor([[5, 6, 7]])
    with pytest.raises(ValueError, match=refused):  # else at the first step
        model.training_loss({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([0]), "ids": [0]})


@pytest.mark.integration  # flex attention compiles its kernel first: seconds on a CPU
def test_input_prompts_run_on_a_kernel_that_takes_no_prefix(tiny_backbone):
    """Input prompts need no prefix: the kernel deep prompts cannot use serves them (without gradients:
    flex attention has no backward on CPU)."""
    ids = torch.tensor([[5, 6, 7]])
    prompt_tuning = PromptTuning(backbone=tiny_backbone("llama"), label_names=["a", "b"], num_virtual_tokens=2,
                                 attn_implementation="flex_attention").eval()
    with torch.no_grad():
        scores = prompt_tuning.formats["classification"].scores(
            prompt_tuning.prompted("classification"), {"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    assert scores.shape == (1, 2) and torch.isfinite(scores).all()


def test_a_malformed_weights_sample_is_a_disagreement_not_a_crash(tiny_backbone):
    from lit_prompts.backbone import samples_agree

    assert not samples_agree(["x"], [1.0]) and not samples_agree({"a": 1}, [1.0]) and not samples_agree([True], [1.0])
    assert samples_agree([1.0, -2.0], [1.001, -2.0])
    model = PromptTuning(backbone=tiny_backbone("llama"), label_names=["a", "b"])
    saved = {**model.fingerprint, "weights_digest": "0" * 16, "dtype": "float16", "weights_sample": ["x", None]}
    with pytest.raises(ValueError, match="has other weights"):
        model.check_backbone(saved, source="prompt folder")


@pytest.mark.parametrize("precision", ["bf16-true", "16-true", "64-true", "64"])
def test_a_precision_that_would_cast_the_prompt_is_refused_naming_the_settings_that_halve_the_backbone(
        precision, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stopped:
        main(["fit", "--model=PromptTuning", "--model.backbone=never-loaded", f"--trainer.precision={precision}"])
    assert stopped.value.code == 1
    err = capsys.readouterr().err
    assert f"--trainer.precision {precision} would cast the prompt and head" in err
    assert "--model.backbone_dtype=bfloat16" in err and "--trainer.precision=bf16-mixed" in err
    assert "Traceback" not in err and not list(tmp_path.iterdir()), "stopped before anything started"
