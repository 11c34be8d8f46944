"""Loading a frozen Hugging Face backbone and reading the architecture facts methods need.

A backbone is named by a hub id (``bert-base-uncased``), a local folder, or ``pkg://module/sub/path``
for a model folder shipped inside an installed Python package (resolved without importing it).
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import logging
import os
import platform
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_warn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSeq2SeqLM,
    AutoModelForTextEncoding,
    PretrainedConfig,
    PreTrainedModel,
)

from .prefix_injection import find_self_attention

TASK_FORMATS = ("head", "text_to_text", "cloze", "token", "span")
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}
QUANTIZATIONS = ("4bit", "8bit")


def resolve_path(name: str) -> str:
    """Turn ``pkg://module/sub/path`` into a filesystem path; return anything else unchanged."""
    if not name.startswith("pkg://"):
        return name
    module, _, sub = name[len("pkg://") :].partition("/")
    spec = importlib.util.find_spec(module)  # does not execute the package's __init__
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{name!r}: no installed Python package named {module!r}")
    path = Path(spec.submodule_search_locations[0]) / sub
    if not path.exists():
        raise FileNotFoundError(f"{name!r}: {path} does not exist")
    return str(path)


@dataclass(frozen=True)
class ArchitectureFacts:
    """What prompt methods need to know about a backbone, read from its config."""

    model_type: str
    hidden_size: int
    num_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    is_encoder_decoder: bool
    is_decoder_only: bool
    num_decoder_layers: int  # 0 unless encoder-decoder

    @classmethod
    def from_config(cls, config: PretrainedConfig) -> ArchitectureFacts:
        def first(*names, default=None):
            for n in names:
                value = getattr(config, n, None)
                if value is not None:
                    return value
            if default is None:
                raise ValueError(f"{config.model_type} config has none of {names}")
            return default

        hidden = first("hidden_size", "d_model", "n_embd", "dim")
        heads = first("num_attention_heads", "num_heads", "n_head", "n_heads")
        layers = first("num_hidden_layers", "num_layers", "n_layer", "n_layers")
        kv_heads = first("num_key_value_heads", default=heads)
        head_dim = first("head_dim", "d_kv", default=hidden // heads)
        enc_dec = bool(getattr(config, "is_encoder_decoder", False))
        decoder_only = not enc_dec and config.model_type in _DECODER_ONLY_TYPES
        return cls(
            model_type=config.model_type,
            hidden_size=hidden,
            num_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            head_dim=head_dim,
            is_encoder_decoder=enc_dec,
            is_decoder_only=decoder_only,
            num_decoder_layers=first("num_decoder_layers", default=layers) if enc_dec else 0,
        )


def _decoder_only_types() -> set[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES as causal
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES as masked
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES as s2s

    # Causal-LM types that are neither masked LMs nor encoder-decoders (BERT can be a decoder too).
    return set(causal) - set(masked) - set(s2s)


_DECODER_ONLY_TYPES = _decoder_only_types()


def looks_like_path(name: str) -> bool:
    """A local path rather than a hub id (``org/name``): absolute, relative with ``.``/``~``, or deeper."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name


def load_config(name: str) -> PretrainedConfig:
    """The backbone's config; a folder that does not exist, or a hub id that cannot be had, is named."""
    path = resolve_path(name)
    if looks_like_path(path) and not Path(path).expanduser().is_dir():
        raise FileNotFoundError(f"backbone folder {name!r} does not exist")
    try:
        return AutoConfig.from_pretrained(path)
    except OSError as error:
        reason = str(error).splitlines()[0]
        if Path(path).is_dir():
            raise FileNotFoundError(f"backbone folder {name!r} holds no Hugging Face model: {reason}") from None
        offline = " (HF_HUB_OFFLINE is set: only the local cache is searched)" if os.environ.get("HF_HUB_OFFLINE") else ""
        raise FileNotFoundError(
            f"backbone {name!r} is neither a local folder nor found on the Hugging Face Hub{offline}: {reason}"
        ) from None


# sentence-transformers' Pooling module: the flag its config sets -> the head's pooling that computes the same.
SENTENCE_TRANSFORMERS_POOLING = {"pooling_mode_cls_token": "first", "pooling_mode_mean_tokens": "mean",
                                 "pooling_mode_lasttoken": "last"}


def backbone_file(name: str, filename: str) -> Path | None:
    """``filename`` of the backbone's folder or Hub repo (through ``huggingface_hub``'s cache; offline, the cache
    alone), or None when it has no such file."""
    path = Path(resolve_path(name)).expanduser()
    if path.is_dir() or looks_like_path(name):
        return path / filename if (path / filename).is_file() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return Path(hf_hub_download(name, filename))
    except (EntryNotFoundError, OSError, ValueError):  # no such file, repo, cache entry or connection
        return None


def declared_pooling(name: str) -> str | None:
    """How a sentence-transformers backbone turns token states into the sentence vector it was trained to give
    (``first``, ``mean`` or ``last``), from its Pooling module's config (``modules.json`` names the module's
    folder). None when it declares none, or pools in a way a head does not (max, weighted mean, several
    concatenated); a file that cannot be read is named in a warning."""
    modules = backbone_file(name, "modules.json")
    if modules is None:
        return None
    try:
        entries = json.loads(modules.read_text())
        folder = next((e.get("path") for e in entries if str(e.get("type", "")).endswith(".Pooling")), None)
        if folder is None:
            return None
        config = backbone_file(name, f"{folder}/config.json")
        if config is None:
            raise FileNotFoundError(f"its Pooling module's {folder}/config.json is missing")
        flags = json.loads(config.read_text())
        chosen = {k for k, on in flags.items() if k.startswith("pooling_mode_") and on is True}
    except (OSError, UnicodeDecodeError, ValueError, TypeError, AttributeError) as error:
        rank_zero_warn(f"backbone {name!r}: its sentence-transformers pooling is not readable from {modules} and its "
                       f"Pooling config ({type(error).__name__}: {error}); pooling by architecture instead")
        return None
    return SENTENCE_TRANSFORMERS_POOLING.get(chosen.pop()) if len(chosen) == 1 else None


_SHARED: ContextVar[dict | None] = ContextVar("lit_prompts_shared_backbones", default=None)


@contextmanager
def shared_backbones(cache: dict | None = None):
    """Inside the block, methods built together get one backbone object per (model, form, dtype,
    attention kernel) instead of a copy each: several trained prompts served on one frozen model.
    ``cache``: the backbones of earlier blocks, to share them with the methods built now (it is filled)."""
    token = _SHARED.set({} if cache is None else cache)
    try:
        yield
    finally:
        _SHARED.reset(token)


def quantization_config(quantization: str, dtype: str):
    """transformers' bitsandbytes config for ``quantization`` (``4bit``: NF4 with double quantization,
    computing in ``dtype``, bfloat16 for float32; ``8bit``: LLM.int8), after checking this platform can
    run it."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization={quantization!r} is not one of {QUANTIZATIONS}")
    if not torch.cuda.is_available():
        build = "a CPU-only torch build" if torch.version.cuda is None else "no CUDA device visible"
        raise ValueError(
            f"quantization={quantization!r} loads the backbone through bitsandbytes, which needs a CUDA GPU; this "
            f"platform ({platform.system()} {platform.machine()}, torch {torch.__version__}) has {build}. Drop "
            "model.init_args.quantization, or use backbone_dtype: bfloat16 (or float16) to halve the weights"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ImportError(f"quantization={quantization!r} needs bitsandbytes: pip install 'lit_prompts[quantization]'")
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = torch.bfloat16 if DTYPES[dtype] == torch.float32 else DTYPES[dtype]
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute)


def load_backbone(
    name: str, task_format: str, dtype: str = "float32", attn_implementation: str | None = None, on_meta: bool = False,
    quantization: str | None = None,
) -> PreTrainedModel:
    """Load the backbone in the form a task format needs, frozen and in ``dtype`` (with
    ``quantization``, its linear layers in 4 or 8 bits: see ``quantization_config``); with ``on_meta``,
    only its structure (tensors on the meta device, no weights read: a process that receives its
    shard of the weights from another, see ``sharding``).

    head, token,  the bare encoder (T5: its encoder only); the method adds its own head
    span
    text_to_text  a causal LM, or a seq2seq LM for encoder-decoders; its LM head is reused
    cloze         a masked LM; its LM head scores the verbalizer words at the mask
    """
    if task_format not in TASK_FORMATS:
        raise ValueError(f"task_format={task_format!r} is not one of {TASK_FORMATS}")
    if dtype not in DTYPES:
        raise ValueError(f"backbone_dtype={dtype!r} is not one of {sorted(DTYPES)}")
    if quantization is not None:
        if on_meta:
            raise ValueError(f"quantization={quantization!r} cannot be combined with sharding (the {name!r} weights "
                             "would be quantized on one process only): use one or the other")
        kwargs_quantized = {"quantization_config": quantization_config(quantization, dtype),
                            "device_map": {"": torch.cuda.current_device()}}
    else:
        kwargs_quantized = {}
    path = resolve_path(name)
    config = load_config(name)
    facts = ArchitectureFacts.from_config(config)
    if task_format in ("head", "token", "span"):
        auto = AutoModelForTextEncoding if facts.is_encoder_decoder else AutoModel
    elif task_format == "text_to_text":
        if not (facts.is_encoder_decoder or facts.is_decoder_only):
            raise ValueError(
                f"task_format='text_to_text' needs a decoder or encoder-decoder backbone; "
                f"{name!r} is a {facts.model_type} encoder (use 'head' or 'cloze')"
            )
        auto = AutoModelForSeq2SeqLM if facts.is_encoder_decoder else AutoModelForCausalLM
    else:
        if facts.is_encoder_decoder or facts.is_decoder_only:
            raise ValueError(f"task_format='cloze' needs a masked-LM encoder; {name!r} is a {facts.model_type}")
        auto = AutoModelForMaskedLM
    kwargs = {}
    bare = task_format in ("head", "token", "span")
    if bare and "add_pooling_layer" in inspect.signature(auto._model_mapping[type(config)]).parameters:
        # Our heads pool hidden states themselves; an unused pooler would only add weights (random
        # ones when the checkpoint was saved from a masked LM).
        kwargs["add_pooling_layer"] = False
    if attn_implementation:  # default: transformers' choice, SDPA wherever the architecture has it
        kwargs["attn_implementation"] = attn_implementation
    if on_meta:
        with torch.device("meta"):
            return auto.from_config(config, dtype=DTYPES[dtype], **kwargs).requires_grad_(False)
    shared = _SHARED.get()
    key = (str(Path(path).resolve()) if Path(path).exists() else path, auto.__name__, dtype, attn_implementation, quantization)
    if shared is not None and key in shared:
        return shared[key]
    with _without_load_report():
        model, loading = auto.from_pretrained(path, dtype=DTYPES[dtype], output_loading_info=True, **kwargs,
                                              **kwargs_quantized)
    if loading["missing_keys"]:
        missing = sorted(loading["missing_keys"])
        rank_zero_warn(
            f"backbone {name!r} ({type(model).__name__}, task_format={task_format!r}): {len(missing)} weights are "
            f"not in its checkpoint and keep random values, frozen: {', '.join(missing[:6])}"
            f"{', ...' if len(missing) > 6 else ''}. Use a checkpoint that has them"
            + (" (a masked-LM checkpoint for cloze)" if task_format == "cloze" else "")
        )
    model.requires_grad_(False)
    if shared is not None:
        shared[key] = model
    return model


class _LoadReportFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        fatal = "MISMATCH" in message or "CONVERSION" in message  # transformers raises after these
        return fatal or not ("LOAD REPORT" in message or "seem corrupted" in message)


@contextmanager
def _without_load_report():
    """transformers logs a table of every checkpoint weight the model does not use (the pooler we
    drop, a masked LM's head under a bare encoder) and of every weight it initialised. Only the
    latter matters for a frozen backbone; ``load_backbone`` says so itself, in one line."""
    logger, report_filter = logging.getLogger("transformers.modeling_utils"), _LoadReportFilter()
    logger.addFilter(report_filter)
    try:
        yield
    finally:
        logger.removeFilter(report_filter)


def weights_digest(model: PreTrainedModel, samples_per_tensor: int = 65536) -> str:
    """A short digest of a backbone's weights that tells two checkpoints of one architecture apart
    (base vs instruct), computed in milliseconds at any size: an evenly strided sample of the input
    embeddings and of the first self-attention layer, which every form of the model (bare encoder,
    LM, masked LM) shares. Values are rounded to bfloat16 first, so the same weights loaded in
    float32 or bfloat16 give the same digest."""
    tensors = [model.get_input_embeddings().weight]
    attention = find_self_attention(model)
    if attention:
        tensors += [p for _, p in sorted(attention[0][1].named_parameters())]
    digest = hashlib.sha256()
    for tensor in tensors:
        flat = tensor.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // samples_per_tensor)].to(torch.bfloat16).float().cpu()
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]


def weights_sample(model: PreTrainedModel, count: int = 32) -> list[float]:
    """Input-embedding values at ``count`` fixed positions. The digest tells weights apart exactly but
    changes with the dtype they were loaded in (float16 rounds differently); these values agree to
    within that rounding across dtypes and quantization (which leaves embeddings alone)."""
    flat = model.get_input_embeddings().weight.detach().reshape(-1)
    positions = (torch.arange(count) * (flat.numel() - 1) // (count - 1)).to(flat.device)  # exact, unlike float steps
    return [float(v) for v in flat[positions].float().cpu()]


def samples_agree(a: list[float] | None, b: list[float] | None) -> bool:
    """Two ``weights_sample`` lists equal to within half-precision rounding (bfloat16: 2^-8 relative)."""
    # ``a`` may come from a shared prompt.json: anything but two equally long lists of numbers disagrees.
    if not isinstance(a, list) or not isinstance(b, list) or not a or len(a) != len(b):
        return False
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in a + b):
        return False
    return all(abs(x - y) <= 1e-2 * max(abs(x), abs(y)) + 1e-6 for x, y in zip(a, b))


def hub_commit(name: str) -> str | None:
    """The commit of the Hub snapshot a backbone named by repo id was loaded from (its cached config's
    ``snapshots/<commit>`` folder); None for local folders and packages."""
    if looks_like_path(name) or name.startswith("pkg://") or Path(name).exists():
        return None
    from huggingface_hub import try_to_load_from_cache

    repo, _, revision = name.partition("@")
    try:
        found = try_to_load_from_cache(repo, "config.json", revision=revision or None)
    except ValueError:  # not a valid repo id
        return None
    if not isinstance(found, str):
        return None
    parent = Path(found).parent
    return parent.name if parent.parent.name == "snapshots" else None


def backbone_fingerprint(name: str, model: PreTrainedModel) -> dict:
    """What must match for a trained prompt to be meaningful on a backbone."""
    facts = ArchitectureFacts.from_config(model.config)
    on_meta = model.get_input_embeddings().weight.is_meta
    return {
        "name": name,
        "commit": hub_commit(name),
        "model_type": facts.model_type,
        "hidden_size": facts.hidden_size,
        "num_layers": facts.num_layers,
        "vocab_size": int(model.get_input_embeddings().num_embeddings),
        "num_parameters": int(sum(p.numel() for p in model.parameters())),
        # None while the weights are not here (built on the meta device; sharding fills them in).
        "weights_digest": None if on_meta else weights_digest(model),
        "weights_sample": None if on_meta else weights_sample(model),
        "dtype": str(model.dtype).removeprefix("torch."),
        "quantized": bool(getattr(model, "is_quantized", False)),
    }
