"""``lit_prompts.load``: rebuild a trained method from a checkpoint or an exported prompt folder.

Both kinds of file are meant to be shared, so both are untrusted: the class they name must be a
prompt method that lit_prompts knows (built in, or registered by an installed package under the
``lit_prompts.methods`` entry point) before anything is imported or called; any other class needs
``trust_code=True``.
"""

from __future__ import annotations

import difflib
import importlib
import warnings
from importlib.metadata import entry_points
from pathlib import Path

from . import training
from .contexts import build_outside_cli, restoring  # noqa: F401 - build_outside_cli re-exported: it lives in contexts now
from .hub import prompt_folder
from .methods import PROMPT_CLASSES, Prompt
from .peft_format import ADAPTER_CONFIG, method_settings, prompt_tensors, read_adapter
from .safe_reading import SETTINGS_FILE, read_checkpoint, read_prompt_folder
from .training import PromptMethod
from .training.checkpointing import FORMAT_VERSION
from .training.legacy import upgrade_state_names

ENTRY_POINT_GROUP = "lit_prompts.methods"


def import_class(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def builtin_methods() -> dict[str, type[PromptMethod]]:
    """Short name -> class of every prompt method lit_prompts ships."""
    return {cls.__name__: cls for cls in training.METHODS}


def registered_methods() -> dict[str, str]:
    """Class path -> entry point name of the methods installed packages register (not imported here)."""
    return {ep.value.replace(":", "."): ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}


def known_method_names() -> list[str]:
    return sorted([*builtin_methods(), *registered_methods().values()])


class UntrustedClassError(ValueError):
    """A shared file names a class that is not a known prompt method."""


def method_class(class_path: str, source: str, trust_code: bool = False) -> type[PromptMethod]:
    """The prompt-method class a file names, checked before it is used.

    Built-in methods match by class path or short name; registered ones by their entry point's
    target; anything else is imported only with ``trust_code`` (the file's author then runs code
    on this machine), and must still be a ``PromptMethod`` subclass.
    """
    if not isinstance(class_path, str) or not class_path:
        raise ValueError(f"{source} names no method class (class_path {class_path!r})")
    builtin = builtin_methods()
    by_path = {cls.class_path(): cls for cls in builtin.values()}
    short = class_path.rpartition(".")[2]
    if class_path in by_path:
        return by_path[class_path]
    # Short names, and the class paths lit_prompts 0.1 wrote (lit_prompts.methods.<module>.<Class>).
    if short in builtin and (class_path in (short, f"lit_prompts.{short}") or class_path.startswith("lit_prompts.methods.")):
        return builtin[short]
    registered = registered_methods()
    if class_path in registered or trust_code:
        cls = _load_registered(class_path) if class_path in registered else import_class(class_path)
        if not (isinstance(cls, type) and issubclass(cls, PromptMethod)):
            raise UntrustedClassError(f"{source} names {class_path!r}, which is not a PromptMethod subclass")
        return cls
    close = difflib.get_close_matches(short, known_method_names(), n=1)
    raise UntrustedClassError(
        f"{source} names class {class_path!r}, which is not a lit_prompts method (known: "
        f"{', '.join(known_method_names())}){f'; did you mean {close[0]!r}?' if close else ''}. A method of your own "
        f"loads when its package registers it under the {ENTRY_POINT_GROUP!r} entry point, or with trust_code=True "
        "if you trust whoever wrote this file (loading then imports and runs the code it names)"
    )


def _load_registered(class_path: str) -> type:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.value.replace(":", ".") == class_path:
            return ep.load()
    raise AssertionError(class_path)  # only called for registered paths


def _settings(init_args: dict, source: str, trust_code: bool) -> dict:
    attention = init_args.get("attn_implementation")
    if isinstance(attention, str) and "/" in attention and not trust_code:
        # transformers fetches and runs an attention kernel named by a hub repo id.
        raise UntrustedClassError(
            f"{source} asks for the attention kernel {attention!r}, code from the Hub; load with trust_code=True "
            "if you trust it, or override attn_implementation"
        )
    return init_args


def load(
    path: str | Path,
    map_location: str = "cpu",
    trust_code: bool = False,
    allow_other_weights: bool = False,
    revision: str | None = None,
    **overrides,
):
    """Load a ``.ckpt`` written during training, or a folder holding ``prompt.safetensors`` and
    ``prompt.json``, or a PEFT prompt adapter folder (``adapter_config.json``: see
    ``load_peft_adapter``), or a Hub repo id (``org/name``, ``org/name@revision``) holding one; the
    backbone is reloaded from the name stored with it (``overrides`` can point it elsewhere, e.g.
    ``backbone="/models/my-copy"``).

    Args:
        revision: a Hub repo's branch, tag or commit (default: its main branch).
        trust_code: allow a class that is not a known prompt method (see the module docstring).
        allow_other_weights: use the prompt on a backbone whose weights differ from those it was
            trained on (same architecture): refused by default.
    """
    path = prompt_folder(path, revision)
    if path.is_dir() and not (path / SETTINGS_FILE).exists() and (path / ADAPTER_CONFIG).exists():
        return load_peft_adapter(path, **overrides).to(map_location).eval()
    if path.is_dir():
        settings, tensors = read_prompt_folder(path)
        source = f"prompt folder {path}"
        cls = method_class(settings["class_path"], source, trust_code)
        init_args = _settings(settings["init_args"], source, trust_code)
        with restoring():
            method = cls(**{**init_args, **overrides})
        method.check_backbone(settings["backbone"], source=source, allow_other_weights=allow_other_weights)
        if settings.get("format_version", 1) < FORMAT_VERSION:  # 0.1: the settings rebuild the folded form
            wanted = method.trainable_state_dict()
            tensors = upgrade_state_names(tensors, set(wanted), list(method.formats))
        else:  # the exported (folded) prompt module replaces the one the method built for training
            method.prompt = _prompt_module(settings.get("prompt"), source, trust_code, type(method.prompt))
            wanted = method.export_tensors()
    else:
        checkpoint = read_checkpoint(path)
        meta = checkpoint.get("lit_prompts")
        if not isinstance(meta, dict):
            raise ValueError(f"{path} is not a lit_prompts checkpoint (no 'lit_prompts' entry)")
        source = f"checkpoint {path}"
        cls = method_class(meta.get("class_path"), source, trust_code)
        hyper = {k: v for k, v in checkpoint.get("hyper_parameters", {}).items() if not k.startswith("_")}
        with restoring():
            method = cls(**{**_settings(hyper, source, trust_code), **overrides})
        method.check_backbone(meta.get("backbone", {}), source=source, allow_other_weights=allow_other_weights)
        method.initial_prompt = meta.get("initial_prompt")  # the prompt as fit started (drift, lit_prompts.inspection)
        tensors, wanted = checkpoint["state_dict"], method.trainable_state_dict()
        if meta.get("format_version", 1) < FORMAT_VERSION:
            tensors = upgrade_state_names(tensors, set(wanted), list(method.formats))
        tensors = method.upgrade_state(tensors)
    _check_tensors(tensors, wanted, source)
    method.load_state_dict(tensors, strict=False)
    return method.to(map_location).eval()


def load_peft_adapter(folder: Path, **overrides) -> PromptMethod:
    """A method holding a PEFT prompt adapter: ``PromptTuning`` (PROMPT_TUNING), ``PTuning`` with
    ``encoder: none`` (P_TUNING: PEFT saved the encoder's output) or ``PrefixTuning`` with
    ``prefix_positions: first`` (PREFIX_TUNING), on the adapter's base model unless ``backbone`` is
    given. A causal or seq2seq LM adapter reads text-to-text; others take ``task_format`` (and label
    names) from ``overrides``, their head starting anew."""
    source = f"PEFT adapter {folder}"
    config, weights = read_adapter(folder)
    name, settings = method_settings(config, source)
    settings = {**settings, **overrides}
    if "backbone" not in settings:
        raise ValueError(f"{source} names no base model (base_model_name_or_path): pass backbone=")
    method = builtin_methods()[name](**settings)
    tensors = prompt_tensors(config, weights, method, source)
    method.prompt.load_folded({k.removeprefix("prompt."): v for k, v in tensors.items()}, source)
    if any(f.reads == "hidden" for f in method.formats.values()):
        warnings.warn(f"{source} holds a prompt only: the {method.hparams.task_format} head of this method is "
                      "untrained (train it, e.g. with --model.init_from)", stacklevel=3)
    return method


def _check_tensors(found: dict, wanted: dict, source: str) -> None:
    missing = sorted(set(wanted) - set(found))
    if missing:
        raise KeyError(f"{source} lacks tensors {missing}: it was saved by another method or setting")
    unexpected = sorted(set(found) - set(wanted))
    if unexpected:
        raise ValueError(f"{source} holds tensors {unexpected} that this method does not have")
    for name, tensor in wanted.items():
        if tuple(found[name].shape) != tuple(tensor.shape):
            raise ValueError(
                f"{source}: tensor {name!r} has shape {tuple(found[name].shape)}, the method built from its settings "
                f"needs {tuple(tensor.shape)}"
            )


def _prompt_module(entry, source: str, trust_code: bool, own_class: type) -> Prompt:
    """An empty prompt module of the class and settings an export names: a built-in prompt class,
    the class the (already trusted) method builds itself, or with ``trust_code`` any ``Prompt``."""
    if not isinstance(entry, dict) or not isinstance(entry.get("class_path"), str) or not isinstance(entry.get("settings"), dict):
        raise ValueError(f"{source}: prompt.json field 'prompt' must hold class_path and settings")
    class_path, short = entry["class_path"], entry["class_path"].rpartition(".")[2]
    own = f"{own_class.__module__}.{own_class.__qualname__}"
    if class_path.startswith("lit_prompts.") and short in PROMPT_CLASSES:
        cls = PROMPT_CLASSES[short]
    elif class_path == own:
        cls = own_class
    elif trust_code:
        cls = import_class(class_path)
    else:
        raise UntrustedClassError(f"{source} names prompt class {class_path!r}, which is not a lit_prompts prompt module; "
                                  "load with trust_code=True if you trust whoever wrote this file")
    if not (isinstance(cls, type) and issubclass(cls, Prompt)):
        raise UntrustedClassError(f"{source} names {class_path!r}, which is not a lit_prompts.Prompt subclass")
    try:
        return cls(**entry["settings"])
    except (TypeError, ValueError, RuntimeError) as error:  # wrong names, types or sizes (e.g. a negative length)
        raise ValueError(f"{source}: prompt settings {entry['settings']} do not build {short}: {error}") from None


def load_prompt(folder: str | Path, trust_code: bool = False) -> Prompt:
    """The exported prompt module of ``folder`` alone (no backbone, no Lightning): an ``nn.Module``
    whose ``forward(context)`` gives the ``PromptOutput`` to run a ``PromptedBackbone`` with."""
    settings, tensors = read_prompt_folder(folder)
    source = f"prompt folder {folder}"
    if settings.get("format_version", 1) < FORMAT_VERSION:
        raise ValueError(f"{source} was written by lit_prompts 0.1, before prompts were modules of their own: "
                         "use lit_prompts.load(folder).prompt")
    entry = settings.get("prompt") or {}
    own = PROMPT_CLASSES.get(str(entry.get("class_path", "")).rpartition(".")[2], Prompt)
    prompt = _prompt_module(entry, source, trust_code, own)
    mine = {k.removeprefix("prompt."): v for k, v in tensors.items() if k.startswith("prompt.")}
    _check_tensors(mine, prompt.state_dict(), source)
    prompt.load_state_dict(mine)
    return prompt.eval()
