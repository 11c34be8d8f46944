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
        """Rows of each task answered by its own method (one backbone call per task: the methods'
        prompts differ in kind), in the batch's order and naming their task."""
        if "task_batches" not in batch:
            batch = {"task_batches": {batch["task"]: batch}, "positions": {batch["task"]: list(range(len(batch["ids"])))}}
        rows: dict[int, dict] = {}
        for task, sub_batch in batch["task_batches"].items():
            if task not in self.methods:
                raise KeyError(f"no prompt for task {task!r}; the library holds {list(self.methods)}")
            method = self.methods[task]
            own = method.default_task
            predicted = method.formats[own].predict(method.prompted(own), sub_batch)
            for position, row in zip(batch["positions"][task], predicted):
                rows[position] = {"task": task, **row}
        return [rows[i] for i in sorted(rows)]

    def configure_optimizers(self):
        raise RuntimeError("PromptLibrary serves trained prompts (predict); train each prompt with its own method")
