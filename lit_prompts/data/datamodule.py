"""The shared DataModule: reads a hub dataset or local files and casts the task into a format."""

from __future__ import annotations

import os
from functools import cached_property

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from ..backbone import TASK_FORMATS, ArchitectureFacts, load_config, resolve_path
from .classification import PAIR_TEMPLATES, ClassificationEncoder, label_ids, resolve_label_names, texts, warn_truncated
from .collate import Collator, EpochShuffleSampler, ListDataset
from .sources import RawSplit, SplitReader

STAGES = ("train", "validation", "test", "predict")


class PromptDataModule(LightningDataModule):
    """Classification data from a hub dataset or local csv / tsv / json / jsonl files.

    Args:
        backbone: hub id or folder of the backbone whose tokenizer is used (linked from the model).
        task_format: ``head`` (classifier head), ``cloze`` (masked LM + verbalizer) or
            ``text_to_text`` (causal or seq2seq LM; evaluated by rank classification).
        dataset: hub dataset id, e.g. ``stanfordnlp/sst2``.
        dataset_config: hub dataset configuration name.
        data_files: split name -> local file(s); these win over ``dataset`` for the splits they name.
        splits: stage (train / validation / test / predict) -> split name.
        text_column: column of the (first) text.
        text_pair_column: column of the second text for sentence-pair tasks.
        label_column: column of the label (names or integer ids).
        id_column: column used as the example id in predictions (default: the row number).
        label_names: the label set in order; default from the data.
        verbalizer: label name -> word(s) standing for it in cloze / text-to-text formats.
        template: source template with ``{text}``, ``{text_pair}`` and (cloze) ``{mask}`` fields.
        target_template: text-to-text target, with a ``{label}`` field for the verbalizer word.
        max_length: longest tokenized input; longer texts are truncated with one warning per split.
        batch_size: training batch size (per device).
        eval_batch_size: batch size for validation, test and predict (default: batch_size).
        num_workers: DataLoader worker processes.
    """

    def __init__(
        self,
        backbone: str = "",
        task_format: str = "head",
        dataset: str | None = None,
        dataset_config: str | None = None,
        data_files: dict[str, str | list[str]] | None = None,
        splits: dict[str, str] | None = None,
        text_column: str = "text",
        text_pair_column: str | None = None,
        label_column: str = "label",
        id_column: str | None = None,
        label_names: list[str] | None = None,
        verbalizer: dict[str, str] | None = None,
        template: str | None = None,
        target_template: str = " {label}",
        max_length: int = 256,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
    ):
        super().__init__()
        if task_format not in TASK_FORMATS:
            raise ValueError(f"data.init_args.task_format={task_format!r} is not one of {TASK_FORMATS}")
        if not backbone:
            raise ValueError("data.init_args.backbone is empty (the CLI links it from model.init_args.backbone)")
        # Kept in checkpoints, not sent to loggers: the model logs the linked values (label names).
        self.save_hyperparameters(logger=False)
        self.splits = {"train": "train", "validation": "validation", "test": "test", "predict": "test"}
        self.splits.update(splits or {})
        unknown = set(self.splits) - set(STAGES)
        if unknown:
            raise ValueError(f"data.init_args.splits has unknown stages {sorted(unknown)}; use {STAGES}")
        self.datasets: dict[str, ListDataset] = {}

    # --- what the model needs to know, linked by the CLI at instantiation -----------------------
    @cached_property
    def reader(self) -> SplitReader:
        return SplitReader(self.hparams.dataset, self.hparams.dataset_config, self.hparams.data_files)

    @cached_property
    def label_names(self) -> list[str]:
        train = None if self.hparams.label_names else self.reader.get(self.splits["train"])
        return resolve_label_names(self.hparams.label_names, train, self.hparams.label_column)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @cached_property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        tokenizer = AutoTokenizer.from_pretrained(resolve_path(self.hparams.backbone))
        if tokenizer.pad_token is None:  # GPT-2 style tokenizers: pad with EOS, masked out anyway
            tokenizer.pad_token = tokenizer.eos_token
        if self.facts.is_decoder_only:
            tokenizer.padding_side = "left"
        return tokenizer

    @cached_property
    def facts(self) -> ArchitectureFacts:
        return ArchitectureFacts.from_config(load_config(self.hparams.backbone))

    @cached_property
    def encoder(self) -> ClassificationEncoder:
        h = self.hparams
        verbalizer = h.verbalizer or {}
        missing = [n for n in verbalizer if n not in self.label_names]
        if missing:
            raise ValueError(f"data.init_args.verbalizer names labels {missing} that are not in {self.label_names}")
        template = h.template
        if template is None and h.text_pair_column and h.task_format != "head":
            template = PAIR_TEMPLATES[h.task_format]
        return ClassificationEncoder(
            tokenizer=self.tokenizer,
            task_format=h.task_format,
            is_encoder_decoder=self.facts.is_encoder_decoder,
            label_words=[verbalizer.get(n, n) for n in self.label_names],
            template=template,
            target_template=h.target_template,
            max_length=h.max_length,
        )

    @property
    def verbalizer_token_ids(self) -> list[int] | None:
        return self.encoder.verbalizer_token_ids() if self.hparams.task_format == "cloze" else None

    # --- Lightning hooks ------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "validation"), "validate": ("validation",), "test": ("test",), "predict": ("predict",)}
        for name in wanted[stage] if stage else STAGES:
            if name in self.datasets:
                continue
            split = self.reader.get(self.splits[name])
            if split is None:
                if stage is not None and name != "validation":  # validation is optional in fit
                    raise ValueError(f"no data for stage {name!r}: split {self.splits[name]!r} not found")
                continue
            self.datasets[name] = self._encode(name, split)

    def _encode(self, stage: str, split: RawSplit) -> ListDataset:
        h = self.hparams
        text = texts(split, h.text_column, "text_column")
        pair = texts(split, h.text_pair_column, "text_pair_column") if h.text_pair_column else None
        labels = label_ids(split, h.label_column, self.label_names, required=stage != "predict")
        ids = split.column(h.id_column, "id_column") if h.id_column else list(range(len(text)))
        features, truncated = self.encoder.encode(text, pair)
        warn_truncated(split.source, truncated, len(text), h.max_length)
        for feature, example_id, label in zip(features, ids, labels):
            feature["id"], feature["label"] = example_id, label
        return ListDataset(features)

    def _collator(self, with_candidates: bool) -> Collator:
        fmt = self.hparams.task_format
        return Collator(
            pad_id=self.tokenizer.pad_token_id,
            padding_side=self.tokenizer.padding_side,
            task_format=fmt,
            is_encoder_decoder=self.facts.is_encoder_decoder,
            class_targets=self.encoder.class_target_ids() if fmt == "text_to_text" else None,
            with_candidates=with_candidates,
        )

    def _loader(self, stage: str, train: bool = False) -> DataLoader:
        h = self.hparams
        dataset = self.datasets[stage]
        distributed = self.trainer is not None and self.trainer.world_size > 1
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        sampler = None
        if train and not distributed:  # under DDP Lightning installs a seeded DistributedSampler
            sampler = EpochShuffleSampler(len(dataset), seed=seed)
        return DataLoader(
            dataset,
            batch_size=h.batch_size if train else (h.eval_batch_size or h.batch_size),
            shuffle=train and distributed,
            sampler=sampler,
            collate_fn=self._collator(with_candidates=not train),
            num_workers=h.num_workers,
            # Without its own generator every iter() draws from the global RNG, so a resumed run
            # (which adds a sanity-check pass) would see different dropout masks.
            generator=torch.Generator().manual_seed(seed),
            persistent_workers=h.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("validation") if "validation" in self.datasets else []

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict")
