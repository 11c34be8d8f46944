"""PEFT's adapter format (``adapter_config.json`` + ``adapter_model.safetensors``), both ways, for the
prompts PEFT can represent. Nothing here imports PEFT: the format is plain JSON and tensors, and the
tests prove compatibility with PEFT's own loader.

    lit_prompts (folded prompt)           PEFT peft_type          PEFT tensor ``prompt_embeddings``
    SoftPrompt [P, H] (prompt tuning,     PROMPT_TUNING           [P, H]
      P-tuning's folded encoder)
    Prefix [L, 2, H_kv, P, d]             PREFIX_TUNING           [P, L·2·H_kv·d], per position: layer,
    DeepPrompt [L, P, H] (P-tuning v2),                           key/value, head, channel
      projected by each layer's k/v
    MultiTaskPrompt (mpt, input)          MULTITASK_PROMPT_TUNING [P, H], with prefix_task_cols [T, P, r]
                                                                  = u_t, prefix_task_rows [T, r, H] = v_tᵀ

Positions: PEFT feeds a prefix as a key/value cache, so real tokens are numbered P..P+T-1; lit_prompts
numbers them 0..T-1 unless the method trained with ``prefix_positions: first``. An export records
which it used, and says when PEFT's outputs will differ from lit_prompts'.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor

from .safe_reading import nonfinite_names, read_json_object, read_safetensors

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PROMPT_TYPES = ("PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING", "MULTITASK_PROMPT_TUNING")
# Architectures on which PEFT's prefix tuning runs (as a key/value cache) the way lit_prompts' does.
PEFT_PREFIX_ENCODERS = ("bert", "roberta", "xlm-roberta", "camembert", "electra")


class NotRepresentable(ValueError):
    """A prompt that PEFT's adapter format cannot hold."""


def task_type(facts, task_format: str) -> str:
    """PEFT's task type for a backbone form: its LM classes for text-to-text, else the bare model."""
    if task_format == "text_to_text":
        return "SEQ_2_SEQ_LM" if facts.is_encoder_decoder else "CAUSAL_LM"
    return "FEATURE_EXTRACTION"


def to_peft(method, state: dict[str, Tensor] | None = None) -> tuple[dict, dict[str, Tensor], list[str], dict]:
    """(adapter_config, tensors, differences, facts) of ``method``'s folded prompt in PEFT's format:
    ``differences`` say why PEFT's outputs will differ from lit_prompts' (empty: they agree), ``facts``
    what a reader of the export needs to know besides. Raises ``NotRepresentable`` otherwise."""
    facts, hparams = method.facts, method.hparams
    name = type(method).__name__
    prompt_class, settings, tensors = method.exported(state)
    kind = prompt_class.rpartition(".")[2]
    formats = {spec["task_format"] for spec in method.task_specs().values()}
    config = {
        "base_model_name_or_path": method.fingerprint["name"],
        "revision": method.fingerprint.get("commit"),
        "task_type": task_type(facts, formats.pop()),
        "inference_mode": True,
        "num_transformer_submodules": 1,  # the encoder only, for T5 too (lit_prompts prompts the input)
        "num_layers": facts.num_layers,
        "token_dim": facts.hidden_size,
        "num_attention_heads": facts.num_attention_heads,
        "modules_to_save": None,
        "auto_mapping": None,
    }
    notes, facts_out = [], {"prefix_positions": hparams.get("prefix_positions", "none")}
    if kind == "SoftPrompt":
        weights = {"prompt_embeddings": tensors["prompt.prompt"]}
        config.update(peft_type="PROMPT_TUNING", num_virtual_tokens=settings["length"], prompt_tuning_init="RANDOM",
                      prompt_tuning_init_text=None, tokenizer_name_or_path=None, tokenizer_kwargs=None)
        if settings.get("fills_template"):  # the template belongs to the data, which the method does not know
            facts_out["note"] = ("P-tuning: PEFT prepends all the prompt's vectors, as lit_prompts does without a "
                                 "template; a prompt trained in a template with [P:n] markers elsewhere reads otherwise")
    elif kind in ("Prefix", "DeepPrompt"):
        prefix = tensors["prompt.prefix"] if kind == "Prefix" else deep_prompts_as_prefix(method, tensors["prompt.deep_prompts"])
        layers, _, kv_heads, length, head_dim = prefix.shape
        check_prefix_architecture(facts, name)
        weights = {"prompt_embeddings": prefix.permute(3, 0, 1, 2, 4).reshape(length, -1).contiguous()}
        config.update(peft_type="PREFIX_TUNING", num_virtual_tokens=length, num_layers=layers,
                      token_dim=kv_heads * head_dim, num_attention_heads=kv_heads, encoder_hidden_size=kv_heads * head_dim,
                      prefix_projection=False, init_weights=None)
        if hparams.get("prefix_positions", "none") != "first":
            notes.append(f"positions: {name} trained with real tokens numbered from 0 beside its prefix "
                         f"(prefix_positions: none); PEFT numbers them from {length}, so its outputs differ from "
                         "lit_prompts' (train with prefix_positions: first for an exact export)")
    elif kind == "MultiTaskPrompt" and settings["variant"] == "mpt" and not settings["num_layers"]:
        tasks = settings["tasks"]
        weights = {"prompt_embeddings": tensors["prompt.shared_prompt"],
                   "prefix_task_cols": torch.stack([tensors[f"prompt.task_u.{t}"] for t in tasks]),
                   "prefix_task_rows": torch.stack([tensors[f"prompt.task_v.{t}"].T for t in tasks])}
        config.update(peft_type="MULTITASK_PROMPT_TUNING", num_virtual_tokens=settings["length"], num_tasks=len(tasks),
                      num_ranks=settings["rank"], prompt_tuning_init="RANDOM", prompt_tuning_init_text=None,
                      prompt_tuning_init_state_dict_path=None, prompt_tuning_init_task=0, tokenizer_name_or_path=None,
                      tokenizer_kwargs=None)
        facts_out["task_ids"] = {task: i for i, task in enumerate(tasks)}  # PEFT's task_ids are numbers
    else:
        raise NotRepresentable(
            f"{name} ({kind}{', ' + settings.get('variant', '') if kind == 'MultiTaskPrompt' else ''}) has no PEFT "
            "counterpart: PEFT's prompt methods hold one prompt per adapter (prompt tuning, P-tuning, prefix tuning, "
            "multi-task prompt tuning at the input), not per-example prompts, pools or selectors; export it in "
            "lit_prompts' own format (--format lit_prompts)"
        )
    if facts.is_encoder_decoder and config["peft_type"] == "MULTITASK_PROMPT_TUNING":
        raise NotRepresentable("multi-task prompt tuning on an encoder-decoder: PEFT prompts its decoder too; "
                               "export in lit_prompts' own format")
    return config, {k: v.detach().float().contiguous().cpu() for k, v in weights.items()}, notes, facts_out


def check_prefix_architecture(facts, method_name: str) -> None:
    if facts.is_encoder_decoder:
        raise NotRepresentable(
            f"{method_name} on {facts.model_type}: PEFT's prefix tuning of an encoder-decoder reaches only the decoder "
            "(as a cache), while lit_prompts' prefix enters the encoder and decoder self-attention; export it in "
            "lit_prompts' own format"
        )
    if not (facts.is_decoder_only or facts.model_type in PEFT_PREFIX_ENCODERS):
        raise NotRepresentable(f"{method_name} on {facts.model_type}: PEFT cannot run prefix tuning on this "
                               "architecture (its forward takes no key/value cache); export in lit_prompts' own format")


def deep_prompts_as_prefix(method, deep_prompts: Tensor) -> Tensor:
    """[L, 2, H_kv, P, d]: P-tuning v2's hidden-state prompts [L, P, H] through each layer's frozen key
    and value projections, what the layer computes from them in every forward."""
    return method.backbone.prefix_of(deep_prompts.to(next(method.backbone.parameters()).device)).float().cpu()


def write_adapter(folder: Path, config: dict, tensors: dict[str, Tensor], metadata: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, folder / ADAPTER_WEIGHTS, metadata={"format": "pt", **metadata})
    (folder / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


# --- import -------------------------------------------------------------------------------------------
def read_adapter(folder: str | Path) -> tuple[dict, dict[str, Tensor]]:
    """The config and tensors of a PEFT prompt adapter, checked: a known prompt type, the tensors it
    needs in the shapes its config gives, finite values. Pickled ``adapter_model.bin`` files are not read."""
    folder = Path(folder)
    config_path, weights_path = folder / ADAPTER_CONFIG, folder / ADAPTER_WEIGHTS
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder} is not a PEFT adapter: {ADAPTER_CONFIG} is missing")
    config = read_json_object(config_path)
    kind = config.get("peft_type")
    if kind not in PROMPT_TYPES:
        raise ValueError(f"{config_path}: peft_type {kind!r} is not a prompt method lit_prompts can import (it imports "
                         f"{', '.join(PROMPT_TYPES)}); weight adapters such as LoRA change the backbone itself")
    for field in ("num_virtual_tokens", "token_dim", "num_layers"):
        if not isinstance(config.get(field), int) or isinstance(config.get(field), bool) or config[field] <= 0:
            raise ValueError(f"{config_path}: field {field!r} must be a positive integer (found {config.get(field)!r})")
    if not weights_path.is_file():
        pickled = " (only adapter_model.bin, a pickle, which is not read: convert it to safetensors)" \
            if (folder / "adapter_model.bin").is_file() else ""
        raise FileNotFoundError(f"{folder}: {ADAPTER_WEIGHTS} is missing{pickled}")
    tensors = read_safetensors(weights_path)
    expected = expected_shapes(config)
    found = {k: list(v.shape) for k, v in tensors.items() if k in expected}
    if found != expected:
        raise ValueError(f"{weights_path} holds tensors {({k: list(v.shape) for k, v in tensors.items()})}, but "
                         f"{ADAPTER_CONFIG} ({kind}) needs {expected}: the files do not belong together")
    broken = nonfinite_names(tensors)
    if broken:
        raise ValueError(f"{weights_path}: tensors {broken} hold NaN or infinite values")
    return config, {k: tensors[k].float() for k in expected}


def expected_shapes(config: dict) -> dict[str, list[int]]:
    p, h = config["num_virtual_tokens"], config["token_dim"]
    submodules = config.get("num_transformer_submodules") or 1
    if config["peft_type"] == "PREFIX_TUNING":
        return {"prompt_embeddings": [p, config["num_layers"] * 2 * h]}
    shapes = {"prompt_embeddings": [p * submodules, h]}
    if config["peft_type"] == "MULTITASK_PROMPT_TUNING":
        tasks, rank = config.get("num_tasks") or 1, config.get("num_ranks") or 1
        shapes.update(prefix_task_cols=[tasks, p, rank], prefix_task_rows=[tasks, rank, h])
    return shapes


def method_settings(config: dict, source: str) -> tuple[str, dict]:
    """(lit_prompts method name, its settings) for a PEFT adapter's config."""
    kind, length = config["peft_type"], config["num_virtual_tokens"]
    backbone = config.get("base_model_name_or_path")
    settings = {"num_virtual_tokens": length}
    if isinstance(backbone, str) and backbone:
        settings["backbone"] = backbone
    if config.get("task_type") in ("CAUSAL_LM", "SEQ_2_SEQ_LM"):
        settings["task_format"] = "text_to_text"
    if kind == "PROMPT_TUNING":
        return "PromptTuning", {**settings, "init": "random"}
    if kind == "P_TUNING":  # PEFT saved the encoder's output: the folded vectors
        return "PTuning", {**settings, "encoder": "none"}
    if kind == "PREFIX_TUNING":
        return "PrefixTuning", {**settings, "reparameterize": False, "prefix_positions": "first"}
    raise ValueError(f"{source}: MULTITASK_PROMPT_TUNING adapters are not imported (PEFT numbers their tasks; give "
                     "each task's prompt to PromptTuning instead)")


def prompt_tensors(config: dict, tensors: dict[str, Tensor], method, source: str) -> dict[str, Tensor]:
    """The folded prompt tensors (named as in an export: ``prompt.prompt``, ``prompt.prefix``) of a PEFT
    adapter, checked against the backbone ``method`` loaded."""
    facts, kind = method.facts, config["peft_type"]
    embeddings = tensors["prompt_embeddings"]
    if kind == "PREFIX_TUNING":
        check_prefix_architecture(facts, "a PEFT prefix adapter")
        kv_width = facts.num_key_value_heads * facts.head_dim
        if (config["num_layers"], config["token_dim"]) != (method.backbone.num_layers, kv_width):
            raise ValueError(f"{source} was made for another backbone: {config['num_layers']} layers of key/value width "
                             f"{config['token_dim']}, but {method.fingerprint['name']!r} has {method.backbone.num_layers} "
                             f"of width {kv_width}")
        length = config["num_virtual_tokens"]
        prefix = embeddings.view(length, config["num_layers"], 2, facts.num_key_value_heads, facts.head_dim)
        return {"prompt.prefix": prefix.permute(1, 2, 3, 0, 4).contiguous()}
    if config["token_dim"] != facts.hidden_size:
        raise ValueError(f"{source} was made for another backbone: prompt vectors of width {config['token_dim']}, but "
                         f"{method.fingerprint['name']!r} has hidden size {facts.hidden_size}")
    vectors = embeddings[: config["num_virtual_tokens"]]  # a T5 adapter's decoder rows go unused by PEFT too
    return {"prompt.prompt": vectors.contiguous()}  # the folded prompt: P-tuning's encoder output is plain vectors
