"""``init_from``: start a method's prompt (and heads) from a trained one, in lit_prompts' or PEFT's format."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from ..hub import prompt_folder
from ..peft_format import ADAPTER_CONFIG, prompt_tensors, read_adapter
from ..safe_reading import SETTINGS_FILE, read_prompt_folder
from ..tasks.classification import Pooling


def start_from(method, source: str) -> str:
    """Load ``source``'s folded prompt into ``method.prompt`` (and the heads of a lit_prompts export whose
    tensors fit); returns a description of where they came from."""
    folder = prompt_folder(source)
    where = f"init_from {source}"
    if (folder / SETTINGS_FILE).is_file():
        settings, tensors = read_prompt_folder(folder)
        method.check_backbone(settings["backbone"], source=where)
        heads = {k: v for k, v in tensors.items() if not k.startswith("prompt.")}
        saved_pooling = (settings.get("init_args") or {}).get("pooling")
    elif (folder / ADAPTER_CONFIG).is_file():
        config, weights = read_adapter(folder)
        tensors, heads, saved_pooling = prompt_tensors(config, weights, method, where), {}, None
    elif folder.is_file():
        from ..loading import load  # a checkpoint: its method folds its own prompt

        trained = load(folder, backbone=method.hparams.backbone)
        tensors = trained.export_tensors()
        heads = {k: v for k, v in tensors.items() if not k.startswith("prompt.")}
        saved_pooling = trained.hparams.pooling
    else:
        raise FileNotFoundError(f"{where}: no exported prompt ({SETTINGS_FILE}), PEFT adapter ({ADAPTER_CONFIG}) or "
                                "checkpoint there")
    method.prompt.load_folded({k.removeprefix("prompt."): v for k, v in tensors.items() if k.startswith("prompt.")}, where)
    own = method.state_dict()
    fitting = {k: v for k, v in heads.items() if k in own and own[k].shape == v.shape}
    if fitting:
        method.load_state_dict(fitting, strict=False)
        check_pooling(method, saved_pooling, where)
    if heads and len(fitting) < len(heads):
        rank_zero_warn(f"{where}: heads {sorted(set(heads) - set(fitting))} do not fit this method's (other task, "
                       "labels or format) and start anew")
    rank_zero_info(f"prompt started from {source}" + (f" with its heads {sorted(fitting)}" if fitting else ""))
    return str(Path(source))


def check_pooling(method, saved, where: str) -> None:
    """Warn when a head comes from a run that pooled the hidden states otherwise (e.g. saved with the
    first token, the default before ``pooling: backbone``): it starts from features of another kind."""
    heads = [s for s in method.task_specs().values() if s["task_format"] == "head"]
    if not heads or saved not in get_args(Pooling):
        return
    saved, own = method.head_pooling(saved, heads), method.hparams.pooling
    if saved != own:
        rank_zero_warn(f"{where}: its heads were trained on the hidden states pooled by {saved!r}, this run pools by "
                       f"{own!r}: the heads start from another kind of input (set --model.pooling={saved} to keep theirs)")
