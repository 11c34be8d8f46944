"""The shared DataModule: reads a hub dataset or local files and casts the task into a format."""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from functools import cached_property

import torch
from jsonargparse.typing import NonNegativeInt, PositiveInt
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from ..backbone import ArchitectureFacts, load_config, resolve_path
from ..formats import Task, TaskFormat, check_task_format
from .classification import ClassificationEncoder
from .collate import EpochShuffleSampler, ListDataset, ResumableLoader, trainer_position, training_share
from .encoding import Columns, EncoderSettings, TaskData, check_counts
from .labels import LabelSet
from .ner import NerEncoder
from .qa import QaEncoder
from .raw import RawSplit, check_encoding
from .sources import SplitReader

STAGES = ("train", "validation", "test", "predict")
# task -> the class that reads, encodes and collates its data (see encoding.TaskData).
DATA_ENCODERS: dict[str, type[TaskData]] = {"classification": ClassificationEncoder, "ner": NerEncoder, "qa": QaEncoder}


def check_data_files(data_files: dict | None, splits: dict[str, str]) -> None:
    """Every ``data_files`` key must be a split some stage reads: a misspelled one would be ignored."""
    read = list(dict.fromkeys(splits.values()))
    for key in data_files or {}:
        if key in read:
            continue
        if key in STAGES:
            hint = f" To read it in stage {key!r}, set data.init_args.splits={{{key}: {key}}}."
        else:
            close = difflib.get_close_matches(key, read, n=1)
            hint = (f" Did you mean {close[0]!r}?" if close
                    else f" To read it, map a stage to it, e.g. data.init_args.splits={{validation: {key}}}.")
        raise ValueError(
            f"data.init_args.data_files names the split {key!r}, which no stage reads; the stages read {read} "
            f"(stage -> split: {splits}, see data.init_args.splits).{hint}"
        )


class PromptDataModule(LightningDataModule):
    """Classification, NER or extractive QA data from a hub dataset or local csv / tsv / json /
    jsonl files (NER also CoNLL column files ``.conll`` / ``.txt``; QA also SQuAD's nested json).

    Args:
        backbone: hub id or folder of the backbone whose tokenizer is used (linked from the model).
        task: ``classification``, ``ner`` or ``qa``.
        task_format: classification: ``head`` (classifier head), ``cloze`` (masked LM + verbalizer)
            or ``text_to_text`` (causal or seq2seq LM; evaluated by rank classification);
            ner: ``token`` (a tag per token) or ``text_to_text`` (entities generated as text);
            qa: ``span`` (start and end scores per token) or ``text_to_text`` (answer generated).
        dataset: hub dataset id, e.g. ``stanfordnlp/sst2``.
        dataset_config: hub dataset configuration name.
        data_files: split name -> local file(s); these win over ``dataset`` for the splits they name.
        splits: stage (train / validation / test / predict) -> split name; every ``data_files`` key
            must be one of these split names.
        encoding: text encoding of local data files (csv, tsv, json, jsonl, CoNLL, SQuAD json), e.g.
            ``latin-1`` or ``cp1252``; utf-8 files may start with a byte-order mark.
        text_column: column of the (first) text.
        text_pair_column: column of the second text for sentence-pair tasks.
        label_column: column of the label (names or integer ids).
        id_column: column used as the example id in predictions (default: the row number).
        tokens_column: ner: column of each sentence's words.
        tags_column: ner: column of each sentence's tags (names or ids); CoNLL files give both.
        question_column: qa: column of the question.
        context_column: qa: column of the context.
        answers_column: qa: column of the answers, ``{text: [...], answer_start: [...]}`` as in SQuAD.
        stride: qa span format: tokens shared by consecutive windows over a long context.
        label_names: the label set in order (ner: the BIO tag set); default from the data: its
            ClassLabel feature, else the train split's values (sorted; as numbers where all are integers).
            Integer labels are indices into these names only when the names come from a ClassLabel
            feature or are configured and none of them is an integer; otherwise labels match by value.
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
        task: Task = "classification",
        task_format: TaskFormat = "head",
        dataset: str | None = None,
        dataset_config: str | None = None,
        data_files: dict[str, str | list[str]] | None = None,
        splits: dict[str, str] | None = None,
        encoding: str = "utf-8",
        text_column: str = "text",
        text_pair_column: str | None = None,
        label_column: str = "label",
        id_column: str | None = None,
        tokens_column: str = "tokens",
        tags_column: str = "ner_tags",
        question_column: str = "question",
        context_column: str = "context",
        answers_column: str = "answers",
        stride: NonNegativeInt = 128,
        label_names: list[str] | None = None,
        verbalizer: dict[str, str] | None = None,
        template: str | None = None,
        target_template: str = " {label}",
        max_length: PositiveInt = 256,
        batch_size: PositiveInt = 32,
        eval_batch_size: PositiveInt | None = None,
        num_workers: NonNegativeInt = 0,
    ):
        super().__init__()
        check_task_format(task, task_format)  # an unknown task, or a format the task lacks, fails here
        check_counts(1, max_length=max_length, batch_size=batch_size, eval_batch_size=eval_batch_size)
        check_counts(0, stride=stride, num_workers=num_workers)
        if not backbone:
            raise ValueError("backbone is empty (the CLI links it from model.init_args.backbone)")
        # Kept in checkpoints, not sent to loggers: the model logs the linked values (label names).
        self.save_hyperparameters(logger=False)
        self.splits = {"train": "train", "validation": "validation", "test": "test", "predict": "test"}
        self.splits.update(splits or {})
        unknown = set(self.splits) - set(STAGES)
        if unknown:
            raise ValueError(f"splits has unknown stages {sorted(unknown)}; use {STAGES}")
        check_encoding(encoding)
        check_data_files(data_files, self.splits)
        self.datasets: dict[str, ListDataset] = {}

    # --- what the model needs to know, linked by the CLI at instantiation -----------------------
    @cached_property
    def reader(self) -> SplitReader:
        h = self.hparams
        return SplitReader(h.dataset, h.dataset_config, h.data_files, h.get("encoding", "utf-8"))

    @property
    def task_data(self) -> type[TaskData]:
        """The class that reads, encodes and collates this task's data."""
        return DATA_ENCODERS[self.hparams.task]

    @cached_property
    def columns(self) -> Columns:
        h = self.hparams
        return Columns(text=h.text_column, text_pair=h.text_pair_column, label=h.label_column, id=h.id_column,
                       tokens=h.tokens_column, tags=h.tags_column, question=h.question_column,
                       context=h.context_column, answers=h.answers_column)

    @cached_property
    def labels(self) -> LabelSet:
        """The label (ner: tag) names and how the data's values find them (by value, or integer ids
        as indices where the names come from the config or a ClassLabel feature)."""
        return self.task_data.read_labels(self.hparams.label_names, lambda: self.reader.get(self.splits["train"]), self.columns)

    @property
    def label_names(self) -> list[str]:
        return self.labels.names

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @cached_property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        options = self.task_data.tokenizer_options(self.hparams.task_format)
        tokenizer = AutoTokenizer.from_pretrained(resolve_path(self.hparams.backbone), **options)
        if tokenizer.pad_token is None:  # GPT-2 style tokenizers: pad with EOS, masked out anyway
            tokenizer.pad_token = tokenizer.eos_token
        if self.facts.is_decoder_only:
            tokenizer.padding_side = "left"
        return tokenizer

    @cached_property
    def facts(self) -> ArchitectureFacts:
        return ArchitectureFacts.from_config(load_config(self.hparams.backbone))

    @cached_property
    def encoder(self) -> TaskData:
        h = self.hparams
        return self.task_data.build(EncoderSettings(
            tokenizer=self.tokenizer, task_format=h.task_format, is_encoder_decoder=self.facts.is_encoder_decoder,
            labels=self.labels, columns=self.columns, template=h.template, target_template=h.target_template,
            verbalizer=h.verbalizer, max_length=h.max_length, stride=h.stride,
        ))

    @property
    def template_virtual_tokens(self) -> int:
        """How many ``[P:n]`` virtual tokens the template holds (P-tuning)."""
        return self.encoder.virtual_tokens

    @property
    def verbalizer_token_ids(self) -> list[int] | None:
        # Linked to the model when the CLI builds it: only cloze has label words to look up, and the
        # other formats must not load the tokenizer that early.
        return self.encoder.verbalizer_token_ids() if self.hparams.task_format == "cloze" else None

    def encode(self, split: RawSplit, stage: str) -> ListDataset:
        """A split's rows as this task's features (``stage``: predict rows need no labels). The rows
        are read and checked first: a mistake in the data is reported before the tokenizer loads."""
        rows = self.task_data.read(split, stage, self.columns, lambda: self.labels)
        return self.encoder.encode(rows)

    def collator(self, train: bool) -> Callable[[list[dict]], dict]:
        """The collate function of training batches, or (not ``train``) of evaluation and predict batches."""
        return self.encoder.collator(train)

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
            self.datasets[name] = self.encode(split, name)

    def _loader(self, stage: str, train: bool = False) -> DataLoader:
        h = self.hparams
        dataset = self.datasets[stage]
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        settings = dict(
            batch_size=h.batch_size if train else (h.eval_batch_size or h.batch_size),
            collate_fn=self.collator(train),
            num_workers=h.num_workers,
            # Without its own generator every iter() draws from the global RNG, so a resumed run
            # (which adds a sanity-check pass) would see different dropout masks.
            generator=torch.Generator().manual_seed(seed),
            persistent_workers=h.num_workers > 0,
        )
        if not train:
            return DataLoader(dataset, **settings)
        # The shuffle depends on (seed, epoch) alone and splits between DDP ranks itself; the loader's
        # position goes into checkpoints, so that a run resumed in mid-epoch goes on where it was.
        sampler = EpochShuffleSampler(len(dataset), seed=seed, **training_share(self.trainer))
        return ResumableLoader(dataset, sampler=sampler, position_source=trainer_position(self), **settings)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("validation") if "validation" in self.datasets else []

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict")
