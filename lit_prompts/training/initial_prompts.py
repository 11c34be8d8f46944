"""Starting values of prompts, read from the frozen backbone (or from an exported prompt)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..hub import prompt_folder
from ..prompted_backbone import PromptedBackbone
from ..safe_reading import PROMPT_FILE, read_prompt_folder


def initial_prompt(backbone: PromptedBackbone, length: int, init: str, init_text: str | None,
                   label_names: list[str] | None) -> Tensor:
    """[P, H] for prompt tuning's ``init`` choices (see ``PromptTuning``)."""
    if init == "text" and not init_text:
        raise ValueError("init='text' needs init_text")
    if not backbone.holds_weights:  # its prompt values will come from rank 0 (sharding)
        return torch.zeros(length, backbone.facts.hidden_size)
    table = backbone.model.get_input_embeddings().weight.detach().float()
    if init == "random":
        return torch.randn(length, table.shape[1]) * table.std()
    if init == "vocab":
        return backbone.vocab_embeddings((length,))
    text = init_text if init == "text" else " ".join(label_names or [])
    ids = backbone.tokenizer(text, add_special_tokens=False).input_ids
    if not ids:
        raise ValueError(f"prompt initialisation text {text!r} has no tokens")
    ids = (ids * (length // len(ids) + 1))[:length]
    return table[torch.tensor(ids)].clone()


def initial_prefix(backbone: PromptedBackbone, length: int) -> Tensor:
    """[L, 2, H_kv, P, d]: keys and values of random vocabulary tokens under each layer's own
    projections, the scale each layer's attention expects."""
    with torch.no_grad():
        tokens = torch.stack([backbone.vocab_embeddings((length,)) for _ in range(backbone.num_layers)])
        return torch.stack([torch.stack(kv) for kv in backbone.layer_kv(tokens)]).float()


def prompt_from_folder(folder: str, shape: tuple[int, ...], placement: str) -> Tensor:
    """A trained single-task prompt of ``shape`` from an exported folder or a Hub repo id holding one
    (``org/name[@revision]``, fetched into the Hugging Face cache): multi-task ``init_prompt``."""
    try:
        local = prompt_folder(folder)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"init_prompt: {error}") from None
    path = local / PROMPT_FILE
    if not path.exists():
        raise FileNotFoundError(f"init_prompt: {path} does not exist (export a trained prompt first)")
    _, tensors = read_prompt_folder(local)
    names = ("prompt", "prompt_embedding") if len(shape) == 2 else ("deep_prompts",)
    found = [v for k, v in tensors.items() if k.rpartition(".")[2] in names]
    if not found:
        raise ValueError(
            f"{path} holds no prompt for placement {placement!r} (tensors {sorted(tensors)}): "
            "export PromptTuning or PTuning for 'input', PTuningV2 for 'layers'"
        )
    if tuple(found[0].shape) != shape:
        raise ValueError(f"{path}: prompt of shape {tuple(found[0].shape)}; this run needs {shape} "
                         "(set model.init_args.num_virtual_tokens, and use the same backbone)")
    return found[0].float().clone()
