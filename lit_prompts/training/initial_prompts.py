"""Starting values of prompts, read from the frozen backbone (or from an exported prompt)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

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
    return table[text_ids(backbone, text, length)].clone()


def text_ids(backbone: PromptedBackbone, text: str, length: int) -> Tensor:
    """[P] token ids of ``text`` (no special tokens), repeated or cut to ``length``."""
    ids = backbone.tokenizer(text, add_special_tokens=False).input_ids
    if not ids:
        raise ValueError(f"prompt initialisation text {text!r} has no tokens")
    return torch.tensor((ids * (length // len(ids) + 1))[:length])


@torch.no_grad()
def word_hidden_prompts(backbone: PromptedBackbone, length: int, text: str, prefix_positions: str = "none") -> Tensor:
    """[L, P, H]: deep prompts from the activations of real words, P-tuning v2's counterpart of
    ``word_prefix``: each self-attention layer's input hidden states of ``text``'s tokens (repeated or cut
    to P), the words run where ``word_prefix`` runs them. Through the layer's projections they give the
    words' keys and values (without rotary positions, as every deep prompt enters). Zeros in a process
    without the weights (sharding)."""
    shape = (backbone.num_layers, length, backbone.facts.hidden_size)
    if not backbone.holds_weights:
        return torch.zeros(shape)
    ids, positions = _word_ids(backbone, text, length, prefix_positions)
    prompts = torch.stack([hidden[0] for hidden in backbone.attention_inputs(ids, positions)])
    if tuple(prompts.shape) != shape:
        raise RuntimeError(f"init='words': the attention modules received hidden states of shape "
                           f"{tuple(prompts.shape)}, not {shape}")
    return prompts.float().cpu()


def _word_ids(backbone: PromptedBackbone, text: str, length: int, prefix_positions: str) -> tuple[Tensor, Tensor | None]:
    """[1, P] ids of the words and their positions (see ``word_prefix``: right before the text)."""
    model = backbone.model
    ids = text_ids(backbone, text, length).to(model.get_input_embeddings().weight.device)[None]
    positions = None
    if backbone.facts.is_decoder_only and prefix_positions != "first" and _is_rotary(model):
        positions = torch.arange(-length, 0, device=ids.device)[None]
    return ids, positions


def initial_prefix(backbone: PromptedBackbone, length: int) -> Tensor:
    """[L, 2, H_kv, P, d]: keys and values of random vocabulary tokens under each layer's own
    projections, the scale each layer's attention expects."""
    with torch.no_grad():
        tokens = torch.stack([backbone.vocab_embeddings((length,)) for _ in range(backbone.num_layers)])
        return torch.stack([torch.stack(kv) for kv in backbone.layer_kv(tokens)]).float()


def default_init_text(task: str, label_names: list[str] | None) -> str:
    """A short description of the task in real words, its labels (or entity types) named: Li & Liang found
    task-relevant words a slightly better prefix initialisation than unrelated ones, and any real words far
    better than random values, above all with little data."""
    names = [n for n in label_names or [] if n]
    if task == "ner":
        types = list(dict.fromkeys(n.split("-", 1)[-1] for n in names if n.upper() != "O"))
        return "find the named entities in the text" + (f": {', '.join(types)}" if types else "")
    if task == "qa":
        return "answer the question from the context"
    return "classify the text" + (f" as {' or '.join(names)}" if names else "")


def _is_rotary(model: nn.Module) -> bool:
    return any(type(m).__name__.endswith("RotaryEmbedding") for m in model.modules())


@torch.no_grad()
def word_prefix(backbone: PromptedBackbone, length: int, text: str, prefix_positions: str = "none") -> Tensor:
    """[L, 2, H_kv, P, d]: Li & Liang's initialisation from the activations of real words. The frozen
    backbone runs on the tokens of ``text`` (repeated or cut to P, as prompt tuning's text init) and each
    self-attention layer's keys and values of those tokens are taken where its attention kernel reads them,
    exactly as the backbone computed them (after rotary embeddings and key norms, before grouped-query
    heads are repeated): at step 0 the text attends to these words at every layer.

    Where the words sit: a prefix stands in front of the text. Under ``prefix_positions: first`` the text's
    tokens take positions P.., so the words run at positions 0..P-1: the prefix is then the key/value cache
    of the words (decoders: exactly the backbone on words + text). Under ``none`` the text keeps positions
    0..: rotary decoders (Llama-style) run the words at positions -P..-1, which, rotary attention depending
    only on relative positions, is again exactly a cache of the words right before the text (at 0..P-1
    the words would sit among, even after, the text's tokens). Absolute positions (BERT, RoBERTa, GPT-2)
    cannot go below 0: the words keep positions 0..P-1. T5 (relative bias; prefix keys get zero bias)
    runs the words through the encoder and, as decoder inputs, through the decoder, whose self-attention
    layers the prefix covers too. DistilBERT and MPNet, which take no cache, are read at the kernel alike.

    A process without the weights (sharding) returns zeros: rank 0's values replace them."""
    shape = (backbone.num_layers, 2, backbone.facts.num_key_value_heads, length, backbone.facts.head_dim)
    if not backbone.holds_weights:
        return torch.zeros(shape)
    ids, positions = _word_ids(backbone, text, length, prefix_positions)
    layers = backbone.attention_keys_values(ids, positions)
    prefix = torch.stack([torch.stack([key[0], value[0]]) for key, value in layers])
    if tuple(prefix.shape) != shape:
        raise RuntimeError(f"init='words': the attention kernels read keys of shape {tuple(prefix.shape)}, not {shape}")
    return prefix.float().cpu()


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
