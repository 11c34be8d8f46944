"""``lit_prompts.load``: rebuild a trained method from a checkpoint or an exported prompt folder."""

from __future__ import annotations

import contextvars
import importlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from .methods.checkpointing import PROMPT_FILE, SETTINGS_FILE


def import_class(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def build_outside_cli(build, *args, **kwargs):
    """``build(*args, **kwargs)`` in a fresh context. While LightningCLI instantiates a class it hands
    the hyperparameters it parsed to every ``save_hyperparameters()`` call through a context
    variable, so objects built inside another one's ``__init__`` (a multi-task module's task modules,
    a prompt library's loaded methods) would record the outer object's arguments as their own."""
    return contextvars.Context().run(build, *args, **kwargs)


def load(path: str | Path, map_location: str = "cpu", **overrides):
    """Load a ``.ckpt`` written during training, or a folder holding ``prompt.safetensors`` and
    ``prompt.json``; the backbone is reloaded from the name stored with it (``overrides`` can
    point it elsewhere, e.g. ``backbone="/models/my-copy"``)."""
    path = Path(path)
    if path.is_dir():
        settings = json.loads((path / SETTINGS_FILE).read_text())
        method = import_class(settings["class_path"])(**{**settings["init_args"], **overrides})
        method.check_backbone(settings["backbone"], source=f"prompt file {path}")
        tensors = load_file(path / PROMPT_FILE)
        missing = sorted(set(method.export_tensors()) - set(tensors))
        if missing:
            raise KeyError(f"{path / PROMPT_FILE} lacks tensors {missing}")
        method.load_state_dict(tensors, strict=False)
        return method.eval()
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    meta = checkpoint.get("lit_prompts")
    if meta is None:
        raise ValueError(f"{path} is not a lit_prompts checkpoint (no 'lit_prompts' entry)")
    return import_class(meta["class_path"]).load_from_checkpoint(path, map_location=map_location, **overrides).eval()
