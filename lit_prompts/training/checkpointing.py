"""Prompt-only checkpoints and exported prompt files.

Checkpoints keep the full training state of the prompt side (every trainable tensor and, through
Lightning, its optimizer state) and nothing of the frozen backbone, which is reloaded from its
name. ``state_dict()`` itself stays whole so that ordinary PyTorch code keeps working.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_warn
from safetensors.torch import save_file

from ..backbone import samples_agree
from ..safe_reading import PROMPT_FILE, SETTINGS_FILE, nonfinite_names, tensors_sha256
from ..sharding import full, is_sharded, unsharded_class
from .divergence import DivergenceError, check_finite_state
from .legacy import upgrade_state_names

FINGERPRINT_KEYS = ("model_type", "hidden_size", "num_layers", "vocab_size")
# 1: lit_prompts 0.1 (one class per method); 2: prompt module, task formats and backbone composed.
FORMAT_VERSION = 2
# Set to 1 to use a prompt on other weights of the same architecture (the digests differ) on purpose.
ALLOW_OTHER_WEIGHTS = "LIT_PROMPTS_ALLOW_OTHER_BACKBONE"


def describe_backbone(fingerprint: dict) -> str:
    """``'name' (commit abc123, weights digest 0123...)`` from a backbone fingerprint."""
    details = [f"commit {fingerprint['commit']}" if fingerprint.get("commit") else "",
               f"weights digest {fingerprint['weights_digest']}" if fingerprint.get("weights_digest") else ""]
    detail = ", ".join(d for d in details if d)
    return f"{fingerprint.get('name')!r}" + (f" ({detail})" if detail else "")


def check_fingerprint(saved: dict, loaded: dict, source: str, allow_other_weights: bool = False) -> None:
    """A prompt trained on backbone ``saved`` (a fingerprint) runs on ``loaded``: same architecture and
    shape, and (unless allowed) the same weights, by the digest both fingerprints record."""
    mismatched = {k: (saved[k], loaded[k]) for k in FINGERPRINT_KEYS if k in saved and saved[k] != loaded[k]}
    if mismatched:
        detail = ", ".join(f"{k}: saved {a} vs loaded {b}" for k, (a, b) in mismatched.items())
        raise ValueError(
            f"this {source} was trained on backbone {saved.get('name')!r}, which differs from "
            f"{loaded['name']!r} ({detail})"
        )
    allow_other_weights = allow_other_weights or os.environ.get(ALLOW_OTHER_WEIGHTS) == "1"
    saved_digest, digest = saved.get("weights_digest"), loaded.get("weights_digest")
    loaded_alike = (saved.get("dtype"), saved.get("quantized")) == (loaded.get("dtype"), loaded.get("quantized"))
    if not loaded_alike and samples_agree(saved.get("weights_sample"), loaded.get("weights_sample")):
        saved_digest = digest  # the same weights in another dtype or quantization: their digests differ
    if saved_digest and digest and saved_digest != digest and allow_other_weights:
        rank_zero_warn(
            f"this {source} was trained on backbone {describe_backbone(saved)}, but runs on "
            f"{describe_backbone(loaded)}: other weights of the same architecture (allowed by "
            f"allow_other_weights or {ALLOW_OTHER_WEIGHTS}=1); its outputs may be far from those it was trained for"
        )
    elif saved_digest and digest and saved_digest != digest:
        raise ValueError(
            f"this {source} was trained on backbone {describe_backbone(saved)}, but "
            f"{describe_backbone(loaded)} has other weights of the same architecture, e.g. "
            "base vs instruct: a prompt does not carry over. To use it anyway, pass allow_other_weights=True "
            f"to lit_prompts.load, or set {ALLOW_OTHER_WEIGHTS}=1"
        )


class PromptCheckpointing:
    """Mixed into ``PromptMethod``; expects ``fingerprint``, ``hparams``, ``prompt`` and ``formats``."""

    # Lightning: the checkpoint deliberately lacks backbone keys, so do not load strictly.
    strict_loading = False
    # The folded prompt's tensors (``prompt.`` names, CPU fp32) when fit started, kept in checkpoints so that
    # a resumed run, and ``lit_prompts.inspection``, measure drift from the first initialisation.
    initial_prompt: dict[str, torch.Tensor] | None = None
    _initial_prompt_restored = False

    def trainable_names(self) -> set[str]:
        return {n for n, p in self.named_parameters() if p.requires_grad}

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The trainable tensors, whole (under FSDP gathered from their shards: every rank must call it)."""
        names = self.trainable_names()
        return {k: full(v) for k, v in self.state_dict().items() if k in names}

    @classmethod
    def class_path(cls) -> str:
        cls = unsharded_class(cls)
        return f"{cls.__module__}.{cls.__qualname__}"

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        names = self.trainable_names()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in names}
        check_finite_state(self, checkpoint["state_dict"])  # a NaN model is never saved, so never chosen as best
        checkpoint["lit_prompts"] = {
            "class_path": self.class_path(),
            "format_version": FORMAT_VERSION,
            "backbone": dict(self.fingerprint),
            # Restoring the RNG makes a resumed run draw the same dropout masks as an uninterrupted one.
            "rng": {
                "torch": torch.get_rng_state(),
                "python": random.getstate(),  # (numpy's state is not weights-only loadable; unused here)
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
            "skipped_steps": getattr(self, "skipped_steps", 0),  # nonfinite=skip: the count goes on after a resume
        }
        if self.initial_prompt is not None:
            checkpoint["lit_prompts"]["initial_prompt"] = self.initial_prompt

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        meta = checkpoint.get("lit_prompts", {})
        self.check_backbone(meta.get("backbone", {}), source="checkpoint")
        self.check_parameter_groups(checkpoint)
        if "state_dict" in checkpoint:  # (a sharding strategy has loaded it, after check_tensors)
            self.check_tensors(checkpoint)
            # The frozen backbone, left out on purpose, is already loaded from its name: hand its own
            # tensors back (copying a tensor onto itself is free) so that loading finds nothing missing,
            # instead of ``load_from_checkpoint`` warning with the name of every backbone weight.
            for name, tensor in self.state_dict().items():
                checkpoint["state_dict"].setdefault(name, tensor)
        self.skipped_steps = meta.get("skipped_steps", 0)
        self.initial_prompt, self._initial_prompt_restored = meta.get("initial_prompt"), True
        rng = meta.get("rng")
        if rng:
            torch.set_rng_state(rng["torch"])
            random.setstate(rng["python"])
            if rng["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])

    def check_parameter_groups(self, checkpoint: dict) -> None:
        """A resumed optimizer needs the parameter groups it saved (``parameter_groups``); torch's own refusal
        names neither the groups nor a setting."""
        saved = [len(state.get("param_groups", [])) for state in checkpoint.get("optimizer_states", [])]
        wanted = len(self.parameter_groups())
        if saved and saved[0] != wanted:
            raise ValueError(f"this checkpoint's optimizer trained {saved[0]} parameter group(s) where "
                             f"{unsharded_class(type(self)).__name__} with these settings trains {wanted}: "
                             + self.parameter_groups_advice(saved[0], wanted))

    def parameter_groups_advice(self, saved: int, wanted: int) -> str:
        """What to do about a checkpoint saved with ``saved`` optimizer groups where the settings give ``wanted``
        (a method whose groups follow a setting names it)."""
        return "resume it with the settings it was saved with (its hyper_parameters)"

    def record_initial_prompt(self) -> None:
        """Keep the folded prompt's values as fit starts, unless they come from a checkpoint (a resumed run
        keeps the first run's; restored before or after this call, depending on the strategy). Under FSDP
        ``exported`` gathers: every rank calls this."""
        resuming = getattr(getattr(self, "_trainer", None), "ckpt_path", None) is not None
        known = self.initial_prompt is not None or self._initial_prompt_restored  # (a second fit goes on from it)
        if resuming or known or not any(True for _ in self.prompt.parameters()):
            return
        tensors = self.exported()[2]
        self.initial_prompt = {k: v.detach().float().cpu().clone() for k, v in tensors.items() if k.startswith("prompt.")}

    def upgrade_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A checkpoint's tensors in the form this method saves them today (a method whose saved tensors
        changed within a format version completes older ones here, e.g. ``PrefixTuning``)."""
        return state

    def check_tensors(self, checkpoint: dict) -> None:
        """The checkpoint holds every trainable tensor of this method (0.1 names upgraded in place)."""
        expected = self.trainable_names()
        if checkpoint.get("lit_prompts", {}).get("format_version", 1) < FORMAT_VERSION:
            checkpoint["state_dict"] = upgrade_state_names(checkpoint["state_dict"], expected, list(self.formats))
        checkpoint["state_dict"] = self.upgrade_state(checkpoint["state_dict"])
        missing = sorted(expected - set(checkpoint["state_dict"]))
        if missing:
            raise KeyError(f"checkpoint lacks trainable tensors {missing}: it was saved by another method or setting")

    def check_backbone(self, saved: dict, source: str, allow_other_weights: bool = False) -> None:
        """The backbone loaded now is the one the prompt was trained on (see ``check_fingerprint``)."""
        check_fingerprint(saved, self.fingerprint, source, allow_other_weights)

    # --- export ---------------------------------------------------------------------------------
    def export_tensors(self, state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Tensors needed at inference: the folded prompt's (``prompt.``) and the other trainable ones
        (task heads; the backbone's own under full fine-tuning). ``state``: trainable tensors to export
        instead of the module's own (a checkpoint's, or gathered from FSDP shards)."""
        return self.exported(state)[2]

    def exported(self, state: dict[str, torch.Tensor] | None = None) -> tuple[str, dict, dict[str, torch.Tensor]]:
        """(class path, settings) of the folded prompt module, and ``export_tensors``."""
        sharded = is_sharded(self)
        if state is None and not sharded:
            return self._exported_with(self.prompt, self.trainable_state_dict())
        if state is None:
            state = self.trainable_state_dict()  # gathered from the shards
        values = {k[len("prompt."):]: v for k, v in state.items() if k.startswith("prompt.")}
        if sharded:  # an unsharded copy of the prompt module holding these values
            prompt = type(self.prompt)(**self.prompt.settings)
            prompt.load_state_dict(values, strict=False)
            return self._exported_with(prompt, state)
        kept = {k: v.detach().clone() for k, v in self.prompt.state_dict().items()}
        self.prompt.load_state_dict(values, strict=False)
        try:  # the live module holds the values for a moment (its class may not rebuild from settings)
            prompt_class, settings, tensors = self._exported_with(self.prompt, state)
            return prompt_class, settings, {k: v.clone() for k, v in tensors.items()}
        finally:
            self.prompt.load_state_dict(kept)

    @staticmethod
    def _exported_with(prompt, state: dict[str, torch.Tensor]) -> tuple[str, dict, dict[str, torch.Tensor]]:
        prompt_class, settings, tensors = prompt.export()
        others = {k: v for k, v in state.items() if not k.startswith("prompt.")}
        return prompt_class, settings, {**{f"prompt.{k}": v for k, v in tensors.items()}, **others}

    def export_init_args(self) -> dict:
        """The settings that rebuild this method (its prompt module is then the exported one)."""
        return {k: v for k, v in self.hparams.items() if not k.startswith("_")}

    def export_peft(self, folder: str | Path, state: dict[str, torch.Tensor] | None = None,
                    training: dict | None = None) -> Path:
        """Write the prompt as a PEFT adapter (``adapter_config.json``, ``adapter_model.safetensors``:
        ``PeftModel.from_pretrained`` reads it) beside lit_prompts' own files (which keep the heads and
        label set); prompt.json's ``peft`` entry says which position convention the prompt used and
        whether PEFT's outputs equal lit_prompts' (a warning says so when they do not)."""
        from ..peft_format import to_peft, write_adapter

        config, tensors, differences, facts = to_peft(self, state)
        folder = Path(folder)
        peft = {"peft_type": config["peft_type"], **facts, "outputs_match": not differences, "differences": differences}
        path = self.export_prompt(folder, state, training, extra={"peft": peft})
        metadata = {"lit_prompts_prefix_positions": facts["prefix_positions"],
                    "lit_prompts_outputs_match": str(not differences).lower()}
        write_adapter(folder, config, tensors, metadata)
        for difference in differences:
            rank_zero_warn(f"PEFT export {folder}: {difference}")
        return path.parent / "adapter_model.safetensors"

    def export_prompt(self, folder: str | Path, state: dict[str, torch.Tensor] | None = None,
                      training: dict | None = None, extra: dict | None = None) -> Path:
        """Write ``prompt.safetensors`` and ``prompt.json`` (class, settings, backbone) into folder;
        ``state`` as in ``export_tensors``; ``training``: how the prompt was measured (metric, value,
        command), kept in prompt.json for model cards."""
        folder = Path(folder)
        prompt_class, prompt_settings, tensors = self.exported(state)
        tensors = {k: v.detach().float().contiguous().cpu() for k, v in tensors.items()}
        broken = nonfinite_names(tensors)
        if broken:
            raise DivergenceError(f"not exporting a prompt to {folder}: the tensors {broken} hold NaN or infinity")
        folder.mkdir(parents=True, exist_ok=True)
        save_file(tensors, folder / PROMPT_FILE)
        settings = {
            "class_path": self.class_path(),
            "format_version": FORMAT_VERSION,
            "init_args": self.export_init_args(),
            # The folded prompt module alone (lit_prompts.load_prompt): usable without this LightningModule.
            "prompt": {"class_path": prompt_class, "settings": prompt_settings},
            "backbone": self.fingerprint,
            "tensors": {k: list(v.shape) for k, v in tensors.items()},
            "tensors_sha256": tensors_sha256(tensors),  # checked on load: a damaged or altered file is refused
        }
        if training:
            settings["training"] = training
        settings.update(extra or {})
        (folder / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n")
        return folder / PROMPT_FILE
