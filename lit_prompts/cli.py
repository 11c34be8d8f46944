"""The command line: ``python -m lit_prompts {fit,validate,test,predict} --config ...``."""

from __future__ import annotations

import importlib.util
import inspect
import os
import re
import sys
from pathlib import Path

from jsonargparse import Namespace
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger

from .callbacks import BestCheckpoint, ContinuedCSVLogger, ExportPrompt, LatestCheckpoint, PredictionWriter
from .cli_errors import INPUT_ERRORS, ShortErrorParser, check_config_files, debug_active, debug_flag, report
from .commands import COMMANDS, run_command
from .data import PromptDataModule
from .loading import import_class, method_class
from .safe_reading import read_checkpoint
from .sharding import STRATEGY_NAME, ShardedPromptStrategy, load_on_rank_zero
from .training import PromptMethod
from .training.collapse import CollapseDetector

# Settings of a --ckpt_path run that the command decides: how to predict, and where the backbone is
# (a copy elsewhere is fine: loading checks its architecture and weights digest against the checkpoint's).
COMMAND_WINS = (*PromptMethod.inference_settings, "backbone")
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
      export of the best prompt, a JSONL prediction writer, and a warning when validation predictions
      collapse to a trivial answer (``CollapseDetector``; ``--collapse.enabled false`` switches it off);
    - the default logger is ``CSVLogger`` (``<default_root_dir>/lightning_logs/version_N/metrics.csv``) whatever is
      installed, where Lightning would switch to TensorBoard once it is; a logger whose package is missing
      stops the run before it starts, with what to install.
    """

    # Loggers whose package is not a dependency: class name -> (modules, any of which will do; what to install).
    logger_packages = {
        "TensorBoardLogger": (("tensorboard", "tensorboardX"), "pip install 'lit-prompts[tensorboard]'"),
        "WandbLogger": (("wandb",), "pip install 'lit-prompts[wandb]'"),
        "MLFlowLogger": (("mlflow",), "pip install 'lit-prompts[mlflow]'"),
        "CometLogger": (("comet_ml",), "pip install comet-ml"),
        "NeptuneLogger": (("neptune",), "pip install neptune"),
        "LitLogger": (("litlogger",), "pip install litlogger"),
    }

    def __init__(self, args=None, run: bool = True, **kwargs):
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("parser_kwargs", {"default_env": True})
        kwargs.setdefault("parser_class", ShortErrorParser)
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
        # checkpoint. A setting this command gives that differs from the checkpoint's is a mistake
        # to report, not to overwrite, except those in COMMAND_WINS.
        sub = self.config.get("subcommand")
        path = self.config[sub].get("ckpt_path") if sub else None
        saved = {}
        if path and Path(path).is_file():  # "last", "best"... and missing files: Lightning's to report
            checkpoint = read_checkpoint(path)
            check_command_agrees(checkpoint, self.config[sub].model, path)
            saved = checkpoint.get("hyper_parameters") or {}
        keys = [f"model.init_args.{k}" for k in COMMAND_WINS]
        given = {k: self.config[sub].get(k) for k in keys} if sub else {}
        super()._parse_ckpt_path()
        for key, value in given.items():
            if value is not None:
                self.config[sub][key] = value
        # The label set is the checkpoint's: validate or predict needs no training file to infer it.
        data = self.config[sub].get("data") if sub else None
        if saved.get("label_names") and data is not None and "label_names" in (data.get("init_args") or {}):
            if data.init_args.label_names is None:
                data.init_args.label_names = list(saved["label_names"])

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        model_class = import_class(config.model.class_path)
        strategy = config.trainer.strategy
        if getattr(model_class, "uses_parameters_per_task", False) and strategy in DDP_FINDING_UNUSED:
            config.trainer.strategy = DDP_FINDING_UNUSED[strategy]
        self.check_logger_packages(config.trainer.logger)
        self.check_precision(config.trainer.precision)
        self._resume_in_its_log_folder(config)

    @staticmethod
    def check_precision(precision) -> None:
        """Prompts, heads and their optimizer state stay float32 whatever the backbone's dtype; a ``*-true``
        precision would cast them with the backbone, and the first fp32 step would fail on mixed dtypes. Stop
        before anything is built, naming the settings that halve the frozen weights instead."""
        if str(precision) in ("bf16-true", "16-true", "64-true", "64"):  # (64: Lightning's name for 64-true)
            raise ValueError(
                f"--trainer.precision {precision} would cast the prompt and head along with the backbone, and "
                "lit_prompts trains them in float32: halve the frozen weights with --model.backbone_dtype=bfloat16 "
                "(or float16) and compute in half precision with --trainer.precision=bf16-mixed (or 16-mixed)"
            )

    @classmethod
    def check_logger_packages(cls, logger) -> None:
        """A ``trainer.logger`` (or list of them) whose package is not installed stops here, naming the
        logger and what to install, rather than once the model and data are built."""
        for entry in logger if isinstance(logger, list) else [logger]:
            path = entry.get("class_path") if isinstance(entry, Namespace) else None
            if not isinstance(path, str):
                continue
            try:
                names = [klass.__name__ for klass in import_class(path).__mro__]
            except (ImportError, AttributeError, ValueError):
                continue  # the parser's to report
            for name in filter(cls.logger_packages.__contains__, names):
                modules, install = cls.logger_packages[name]
                if not any(cls._installed(module) for module in modules):
                    raise ValueError(f"--trainer.logger {path.rpartition('.')[2]} needs the {modules[0]} package, "
                                     f"which is not installed: {install}")

    def instantiate_trainer(self, **kwargs) -> Trainer:
        # Lightning's default logger (trainer.logger null or true) is TensorBoard once tensorboard is installed;
        # ours stays CSVLogger, with the save_dir Lightning gives its default (trainer.default_root_dir or cwd).
        # Set here rather than in the config, so that the saved config.yaml keeps the logger as it was given.
        trainer = self._get(self.config_init, "trainer", default={})
        if trainer.get("logger") in (None, True) and not trainer.get("barebones") and "logger" not in kwargs:
            kwargs["logger"] = CSVLogger(save_dir=self._root_dir(trainer.get("default_root_dir")))
        return super().instantiate_trainer(**kwargs)

    @staticmethod
    def _root_dir(default_root_dir) -> str:
        """``trainer.default_root_dir`` as the Trainer reads it: the working directory when unset, local paths normalised."""
        root = os.fspath(default_root_dir or os.getcwd())
        return root if "://" in root else os.path.normpath(os.path.expanduser(root))

    @staticmethod
    def _installed(module: str) -> bool:
        # Found without importing it; a bare folder of that name (wandb/ holds W&B's runs) is no package.
        spec = importlib.util.find_spec(module)
        return spec is not None and spec.origin is not None

    def instantiate_classes(self) -> None:
        # Under the sharding strategy, only global rank 0 reads the backbone's weights (sharding.py).
        config = self.config[self.subcommand] if self.subcommand else self.config
        with load_on_rank_zero(is_sharding(config.trainer.strategy)):
            super().instantiate_classes()

    def _resume_in_its_log_folder(self, config) -> None:
        """``fit --ckpt_path <root>/lightning_logs/version_N/checkpoints/X`` with the default logger logs
        into that version_N again, not into a new one: the checkpoint callbacks find their own folder and
        restore their best score and checkpoints (as Lightning does only then), the metrics go on in the
        same metrics.csv (``ContinuedCSVLogger``), and the prompt is exported where it was."""
        if self.subcommand != "fit" or not config.get("ckpt_path") or config.trainer.logger not in (None, True):
            return
        # Our default logger (CSV, see instantiate_trainer), with the save_dir Lightning would give.
        root = self._root_dir(config.trainer.default_root_dir)
        folders = Path(config.ckpt_path).resolve().parents
        version = re.fullmatch(r"version_(\d+)", folders[1].name) if len(folders) > 3 else None
        if not (version and folders[0].name == "checkpoints" and folders[2].name == "lightning_logs"
                and folders[3] == Path(root).resolve() and Path(config.ckpt_path).is_file()):
            return
        logger = ContinuedCSVLogger  # our default logger, CSV, going on in the same metrics.csv
        config.trainer.logger = Namespace(class_path=f"{logger.__module__}.{logger.__qualname__}",
                                          init_args=Namespace(save_dir=root, version=int(version[1])))

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
        parser.add_lightning_class_args(CollapseDetector, "collapse")


def is_sharding(strategy) -> bool:
    """Whether a ``trainer.strategy`` setting names ``ShardedPromptStrategy`` (or a subclass)."""
    path = strategy.get("class_path") if isinstance(strategy, Namespace) else strategy
    if path == STRATEGY_NAME:
        return True
    if not isinstance(path, str) or "." not in path:
        return isinstance(strategy, ShardedPromptStrategy)
    try:
        cls = import_class(path)
    except (ImportError, AttributeError, ValueError):
        return False
    return isinstance(cls, type) and issubclass(cls, ShardedPromptStrategy)


def init_defaults(cls: type) -> dict:
    """Default of every ``__init__`` argument of a class, its bases' (reached through ``**kwargs``) included."""
    defaults = {}
    for klass in reversed(cls.__mro__):
        if "__init__" in vars(klass):
            for name, parameter in inspect.signature(klass.__init__).parameters.items():
                if parameter.default is not inspect.Parameter.empty:
                    defaults[name] = parameter.default
    return defaults


def check_command_agrees(checkpoint: dict, model, path: str) -> None:
    """A ``--ckpt_path`` checkpoint and the model this command configures must agree: the same
    class, and no setting given here that differs from the checkpoint's (settings left at their
    defaults are taken from the checkpoint; how to predict may differ)."""
    saved = checkpoint.get("hyper_parameters") or {}
    saved_class = saved.get("_class_path")
    if model is None or not saved_class:
        return
    if saved_class != model.class_path:
        # The command names its class itself, so only a known method is trusted from the file.
        saved_cls = method_class(saved_class, f"checkpoint {path}")
        if saved_cls is not import_class(model.class_path):
            raise ValueError(
                f"--ckpt_path {path} holds a {saved_cls.__name__} (model.class_path {saved_class}), but this command "
                f"asks for {model.class_path}: drop --model / model.class_path, or give a checkpoint of that method"
            )
    defaults = init_defaults(import_class(model.class_path))
    conflicts = [
        f"{key}: checkpoint {saved[key]!r}, command {value!r}"
        for key, value in vars(model.get("init_args") or {}).items()
        if key in saved and key not in COMMAND_WINS and not key.startswith("_")
        and value != saved[key] and not (key in defaults and value == defaults[key])
    ]
    if conflicts:
        raise ValueError(
            f"--ckpt_path {path} was trained with other model settings than this command gives ({'; '.join(conflicts)}): "
            "drop them from the command (the checkpoint's are used), or train anew without --ckpt_path"
        )


def main(args: list[str] | None = None) -> LitPromptsCLI | None:
    # Tokenizers' own thread pool fights with DataLoader workers and DDP processes.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with debug_flag(sys.argv[1:] if args is None else list(args)) as rest:
        if args is None:  # LightningCLI reads sys.argv itself (and warns when handed a copy of it)
            sys.argv[1:] = rest
        try:
            if rest and rest[0] in COMMANDS:
                return run_command(rest[0], rest[1:])
            check_config_files(rest)
            return LitPromptsCLI(args=None if args is None else rest)
        except INPUT_ERRORS as error:
            if debug_active():
                raise
            report(error)
            raise SystemExit(1) from None
