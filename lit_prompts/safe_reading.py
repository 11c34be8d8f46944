"""Reading files that may come from elsewhere: checkpoints and exported prompt folders.

Such files are untrusted. Reading one never unpickles anything but tensors and plain values, and a
file that is truncated, malformed or altered is refused with a message that names it (never a bare
traceback from deep inside torch or safetensors).
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

PROMPT_FILE = "prompt.safetensors"
SETTINGS_FILE = "prompt.json"


def nonfinite_names(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors that hold NaN or infinity."""
    return [k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """A checksum of named tensors (names, dtypes, shapes and bytes), independent of file layout."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().contiguous().cpu()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def read_checkpoint(path: str | Path) -> dict:
    """A Lightning checkpoint, read with ``weights_only=True``: a pickled object that is not a tensor
    or a plain value (which could run code when unpickled) is refused, not executed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", str(error))
        what = f" ({found.group(1)})" if found else ""
        raise ValueError(
            f"checkpoint {path} holds a Python object that is not a tensor or a plain value{what}; it is refused "
            "because unpickling it could run code. lit_prompts writes no such objects: the file is not one of its "
            "checkpoints, or was altered"
        ) from None
    except Exception as error:  # torch raises RuntimeError, EOFError, KeyError... for damaged files
        reason = str(error).split(". ")[0] or type(error).__name__
        raise ValueError(f"checkpoint {path} cannot be read (empty, truncated or not written by torch.save): {reason}") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise ValueError(f"checkpoint {path} is not a Lightning checkpoint (it has no state_dict)")
    # The parts a resume or a load reads by key: another shape there would fail deep inside as a bare error.
    for field in ("lit_prompts", "hyper_parameters"):
        if not isinstance(checkpoint.get(field, {}), dict):
            raise ValueError(f"checkpoint {path}: field {field!r} must be a dict, not {type(checkpoint[field]).__name__}")
    optimizers = checkpoint.get("optimizer_states", [])
    if not isinstance(optimizers, list) or not all(
            isinstance(state, dict) and isinstance(state.get("param_groups", []), list) for state in optimizers):
        raise ValueError(f"checkpoint {path}: field 'optimizer_states' must be a list of optimizer states "
                         "(dicts with a list of param_groups)")
    return checkpoint


def read_json_object(path: Path, fields: list[str] | None = None) -> dict:
    """A JSON file holding an object; bad text or another JSON value is refused naming the file (and,
    given ``fields``, what the object should hold)."""
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(content, dict):
        raise ValueError(f"{path} must hold a JSON object" + (f" with the fields {fields}" if fields else ""))
    return content


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (which holds no code); a truncated or foreign file is refused naming it."""
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"{path} cannot be read (truncated or not a safetensors file): {error}") from None


def read_prompt_folder(folder: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The settings (``prompt.json``) and tensors (``prompt.safetensors``) of an exported prompt,
    checked against each other: the tensors' names, shapes and checksum must be those the settings
    record."""
    folder = Path(folder)
    settings_path, tensors_path = folder / SETTINGS_FILE, folder / PROMPT_FILE
    for path in (settings_path, tensors_path):
        if not path.is_file():
            raise FileNotFoundError(f"{folder} is not an exported prompt: {path.name} is missing")
    expected = {"class_path": str, "init_args": dict, "backbone": dict, "tensors": dict}
    settings = read_json_object(settings_path, sorted(expected))
    for field, kind in expected.items():
        if not isinstance(settings.get(field), kind):
            raise ValueError(f"{settings_path}: field {field!r} is missing or not a JSON {kind.__name__}")
    tensors = read_safetensors(tensors_path)
    shapes = {name: list(tensor.shape) for name, tensor in tensors.items()}
    if shapes != settings["tensors"]:
        raise ValueError(
            f"{tensors_path} holds tensors {shapes}, but {settings_path.name} records {settings['tensors']}: "
            "the two files do not belong together"
        )
    checksum = settings.get("tensors_sha256")
    if checksum is not None and checksum != tensors_sha256(tensors):
        raise ValueError(
            f"{tensors_path} does not match the checksum in {settings_path.name}: the tensors were changed or damaged "
            "after export"
        )
    broken = nonfinite_names(tensors)
    if broken:
        raise ValueError(f"{tensors_path}: tensors {broken} hold NaN or infinite values")
    return settings, tensors
