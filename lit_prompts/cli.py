"""The command line: ``python -m lit_prompts {fit,validate,test,predict} --config ...``."""

from __future__ import annotations

import os

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from .callbacks import BestCheckpoint, ExportPrompt, LatestCheckpoint, PredictionWriter
from .data import PromptDataModule
from .loading import import_class
from .methods import PromptMethod

DDP_FINDING_UNUSED = {name: f"{name}_find_unused_parameters_true" for name in ("ddp", "ddp_spawn", "ddp_fork", "ddp_notebook")}


class LitPromptsCLI(LightningCLI):
    """LightningCLI with the links between model and data, and the callbacks every run wants.

    - ``model.init_args.backbone`` is copied to the data module (same tokenizer as the model);
    - ``data.init_args.task`` and ``task_format`` are copied to the model;
    - the data module's label names (and cloze verbalizer ids) go to the model at instantiation;
      a ``MultiTaskDataModule`` gives each task's (``task_specs``) to ``MultiTaskPromptTuning``;
    - methods with per-task tensors get DDP's unused-parameter detection (``strategy: ddp`` becomes
      ``ddp_find_unused_parameters_true``): a batch of one task leaves the others' tensors unused;
    - the best checkpoint on the monitored metric, ``last.ckpt`` with the latest state (to resume),
      export of the best prompt, and a JSONL prediction writer.
    """

    def __init__(self, args=None, run: bool = True, **kwargs):
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("parser_kwargs", {"default_env": True})
        super().__init__(
            LightningModule,  # a PromptMethod, or PromptLibrary to serve exported prompts together
            LightningDataModule,  # PromptDataModule (the default) or MultiTaskDataModule
            subclass_mode_model=True,
            subclass_mode_data=True,
            auto_configure_optimizers=False,  # the method's own `optimizer` sees trainable tensors only
            args=args,
            run=run,
            **kwargs,
        )

    def _parse_ckpt_path(self) -> None:
        # With --ckpt_path, Lightning replaces the model's arguments by those saved in the
        # checkpoint. How to predict is not part of what was trained: keep this run's settings.
        sub = self.config.get("subcommand")
        keys = [f"model.init_args.{k}" for k in PromptMethod.inference_settings]
        given = {k: self.config[sub].get(k) for k in keys} if sub else {}
        super()._parse_ckpt_path()
        for key, value in given.items():
            if value is not None:
                self.config[sub][key] = value

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        model_class = import_class(config.model.class_path)
        strategy = config.trainer.strategy
        if getattr(model_class, "uses_parameters_per_task", False) and strategy in DDP_FINDING_UNUSED:
            config.trainer.strategy = DDP_FINDING_UNUSED[strategy]

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.init_args.backbone", "data.init_args.backbone")
        parser.link_arguments("data.init_args.task", "model.init_args.task")
        parser.link_arguments("data.init_args.task_format", "model.init_args.task_format")
        parser.link_arguments("data.label_names", "model.init_args.label_names", apply_on="instantiate")
        parser.link_arguments("data.verbalizer_token_ids", "model.init_args.verbalizer_token_ids", apply_on="instantiate")
        parser.link_arguments("data.task_specs", "model.init_args.task_specs", apply_on="instantiate")
        parser.add_lightning_class_args(BestCheckpoint, "checkpoint")
        # Lightning's save_last only copies the checkpoint saved last, which stops updating when
        # the monitored metric stops improving; resuming needs the latest state, always.
        parser.add_lightning_class_args(LatestCheckpoint, "last_checkpoint")
        parser.set_defaults(
            {
                "data": {"class_path": f"{PromptDataModule.__module__}.{PromptDataModule.__qualname__}"},
                "checkpoint.monitor": "auto",
                "checkpoint.mode": "max",
                "checkpoint.filename": "best-{epoch}-{step}",
                "checkpoint.auto_insert_metric_name": False,
                "last_checkpoint.filename": "last",
                "last_checkpoint.save_top_k": 1,
                "last_checkpoint.enable_version_counter": False,
            }
        )
        parser.add_lightning_class_args(ExportPrompt, "export")
        parser.add_lightning_class_args(PredictionWriter, "predictions")


def main(args: list[str] | None = None) -> LitPromptsCLI:
    # Tokenizers' own thread pool fights with DataLoader workers and DDP processes.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return LitPromptsCLI(args=args)
