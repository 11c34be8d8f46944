"""Prompt-library serving: trained single-task prompts loaded together on one frozen backbone, each
example of a mixed batch answered by its own task's prompt and head.

    python -m lit_prompts predict --model PromptLibrary \\
        --model.backbone sentence-transformers/all-MiniLM-L6-v2 \\
        --model.prompts '{sentiment: runs/sst2/prompt, entities: runs/conll/prompt}' \\
        --data MultiTaskDataModule --data.tasks '{sentiment: {...}, entities: {...}}' \\
        --data.predict_files mixed.jsonl
"""

from __future__ import annotations

from lightning.pytorch import LightningModule
from torch import nn

from .backbone import shared_backbones
from .contexts import build_outside_cli
from .loading import load
from .prompted import share_hidden_states


def _load_sharing_backbone(prompts: dict[str, str], backbone: str, trust_code: bool) -> dict:
    # Run in a fresh context: LightningCLI hands the hyperparameters it parsed for this module to
    # every save_hyperparameters() call during its instantiation through a context variable, which
    # would give each loaded method the library's arguments instead of its own.
    with shared_backbones():
        return {task: load(folder, backbone=backbone, trust_code=trust_code) for task, folder in prompts.items()}


class PromptLibrary(LightningModule):
    """Exported prompts (``prompt.safetensors`` + ``prompt.json`` folders) of any methods, one per task
    name, sharing one backbone object (per backbone form: head / token / span formats share one, a
    text-to-text prompt gets the LM form). Predict only.

    Args:
        prompts: task name -> exported prompt folder; the names are the data module's task names.
        backbone: where to load the frozen backbone from (every prompt must have been trained on it;
            a prompt trained on another backbone is refused).
        trust_code: let prompt folders name method classes that are neither built in nor registered
            by an installed package (see ``lit_prompts.load``); their code then runs here.
    """

    def __init__(self, prompts: dict[str, str], backbone: str, trust_code: bool = False):
        super().__init__()
        if not prompts:
            raise ValueError("model.init_args.prompts is empty: name at least one task's exported prompt folder")
        self.save_hyperparameters()
        self.methods = nn.ModuleDict(build_outside_cli(_load_sharing_backbone, prompts, backbone, trust_code))

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> list[dict]:
        """Rows of each task answered by its own method, in the batch's order and naming their task. The
        tasks whose formats read hidden states share one backbone call, each row with its own prompt, the
        rows packed end to end."""
        if "task_batches" not in batch:
            batch = {"task_batches": {batch["task"]: batch}, "positions": {batch["task"]: list(range(len(batch["ids"])))}}
        unknown = [task for task in batch["task_batches"] if task not in self.methods]
        if unknown:
            raise KeyError(f"no prompt for task {unknown[0]!r}; the library holds {list(self.methods)}")
        runs = {task: self.methods[task].prompted(self.methods[task].default_task) for task in batch["task_batches"]}
        share_hidden_states(runs, batch["task_batches"], [task for task in runs if joins(self.methods[task])], packed=True)
        rows: dict[int, dict] = {}
        for task, sub_batch in batch["task_batches"].items():
            method = self.methods[task]
            predicted = method.formats[method.default_task].predict(runs[task], sub_batch)
            for position, row in zip(batch["positions"][task], predicted):
                rows[position] = {"task": task, **row}
        return [rows[i] for i in sorted(rows)]

    def configure_optimizers(self):
        raise RuntimeError("PromptLibrary serves trained prompts (predict); train each prompt with its own method")


def joins(method) -> bool:
    """Whether a method's rows can share a forward pass with others': its format reads hidden states
    and its layer prefix takes no positions (``prefix_positions: none``)."""
    return (method.formats[method.default_task].reads == "hidden"
            and method.hparams.get("prefix_positions", "none") == "none")
