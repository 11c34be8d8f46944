"""The shared DataModule: a hub dataset or local files, cast into a task's format, cached on disk or streamed."""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import cached_property

from jsonargparse.typing import NonNegativeInt, PositiveInt
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from ..backbone import ArchitectureFacts, load_config, resolve_path
from ..formats import Task, TaskFormat, check_task_format
from .cache import SplitCache
from .cached_splits import CachedSplits
from .classification import ClassificationEncoder
from .collate import ListDataset, batches_taken, trainer_position, trainer_stage
from .encoding import Columns, EncoderSettings, TaskData, check_counts
from .labels import LabelSet, labels_without_data
from .loaders import LoaderSettings, RowEncoder, evaluation_loader, streaming_loader, training_loader
from .ner import NerEncoder
from .qa import QaEncoder
from .raw import RawSplit, check_encoding
from .sources import STAGE_SPLITS, STAGES, SplitReader, check_data_files
from .streaming import RowStream, open_rows, stream_labels

# task -> the class that reads, encodes and collates its data (see encoding.TaskData).
DATA_ENCODERS: dict[str, type[TaskData]] = {"classification": ClassificationEncoder, "ner": NerEncoder, "qa": QaEncoder}


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
        cache: encode each split once into an on-disk cache of memory-mapped Arrow files, reused by
            every process and every later run with the same data, tokenizer and settings (false: each
            process reads and encodes the data into memory, on every run).
        cache_dir: folder of that cache; default ``$LIT_PROMPTS_DATA_CACHE``, else ``lit_prompts`` under
            the ``datasets`` cache (``$HF_DATASETS_CACHE``, ``~/.cache/huggingface/datasets``). Lightning
            fills it on local rank 0 of each node (``prepare_data``) while the other ranks wait; on
            several nodes give each node's local disk, or a shared folder (nodes may then both encode a
            split; the first complete copy is kept). Delete the folder to reclaim its space.
        streaming: read and encode the training split as it is needed (corpora larger than memory or
            disk; see ``lit_prompts.data.streaming`` for what that gives up: set trainer.max_steps and
            an integer trainer.val_check_interval, and label_names).
        shuffle_buffer: streaming: rows held to shuffle the stream (with the order of its files).
        group_by_length: training batches of examples of similar length (less padding), drawn from
            megabatches of a seeded shuffle; deterministic per seed and epoch, resumable.
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
        cache: bool = True,
        cache_dir: str | None = None,
        streaming: bool = False,
        shuffle_buffer: PositiveInt = 10_000,
        group_by_length: bool = False,
    ):
        super().__init__()
        check_task_format(task, task_format)  # an unknown task, or a format the task lacks, fails here
        check_counts(1, max_length=max_length, batch_size=batch_size, eval_batch_size=eval_batch_size,
                     shuffle_buffer=shuffle_buffer)
        check_counts(0, stride=stride, num_workers=num_workers)
        if streaming and group_by_length:
            raise ValueError("group_by_length needs every length in advance, which streaming does not read: "
                             "set only one of data.init_args.streaming and data.init_args.group_by_length")
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
        self.datasets: dict[str, Dataset] = {}  # stage -> its encoded split (streaming: no "train")
        self.labels_from_data = False  # whether the label set was read from the training data

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
        as indices where the names come from the config or a ClassLabel feature). Names read from the
        training data are kept in the cache, next to the encoded training split."""
        configured, read_labels = self.hparams.label_names, self.task_data.read_labels
        found = labels_without_data(read_labels, configured, self.columns)
        if found is not None:
            return found
        if self.hparams.get("streaming"):
            return stream_labels(read_labels, configured, self.columns, self.train_stream)
        self.labels_from_data = True
        saved = self.cached_splits.saved_labels() if self.cached_splits is not None else None
        return saved or read_labels(configured, lambda: self.reader.get(self.splits["train"]), self.columns)

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

    # --- the encoded splits ---------------------------------------------------------------------
    @cached_property
    def cached_splits(self) -> CachedSplits | None:
        """The cache the encoded splits are kept in (None: caching is off)."""
        h = self.hparams
        return CachedSplits(self, SplitCache(h.get("cache_dir"))) if h.get("cache", True) else None

    @cached_property
    def train_stream(self) -> RowStream:
        """streaming: the training split's rows, read lazily."""
        return open_rows(self.reader, self.splits["train"])

    def encoded(self, stage: str) -> Dataset | None:
        """A stage's split, encoded: from the cache where caching is on (encoded and stored first if it
        is not there), else read and encoded in memory; None where the data has no such split."""
        if self.cached_splits is not None:
            return self.cached_splits.get(stage)
        split = self.reader.get(self.splits[stage])
        return None if split is None else self.encode(split, stage)

    def encode(self, split: RawSplit, stage: str) -> ListDataset:
        """A split's rows as this task's features (``stage``: predict rows need no labels). The rows
        are read and checked first: a mistake in the data is reported before the tokenizer loads."""
        rows = self.task_data.read(split, stage, self.columns, lambda: self.labels)
        return self.encoder.encode(rows)

    def collator(self, train: bool) -> Callable[[list[dict]], dict]:
        """The collate function of training batches, or (not ``train``) of evaluation and predict batches."""
        return self.encoder.collator(train)

    # --- Lightning hooks ------------------------------------------------------------------------
    def stages_to_read(self, stage: str | None) -> list[str]:
        """The stages whose splits ``setup(stage)`` encodes (streaming: the training split is read later)."""
        names = STAGE_SPLITS[stage] if stage else STAGES
        return [n for n in names if not (n == "train" and self.hparams.get("streaming"))]

    def prepare_data(self) -> None:
        """Lightning runs it on one process per node (local rank 0) before ``setup`` runs on every rank:
        it encodes the coming stage's splits into the cache, for the other ranks to memory-map. Mistakes
        are raised by ``setup``, on every rank: a rank stopped here leaves the others at Lightning's barrier."""
        try:
            self.prepare_stage(trainer_stage(self.trainer))
        except Exception:  # noqa: BLE001 - setup meets it again, on every rank
            pass

    def prepare_stage(self, stage: str | None) -> None:
        """Encode the splits of ``stage`` (None: every stage) into the cache where they are not yet."""
        for name in self.stages_to_read(stage) if self.cached_splits is not None else []:
            self.encoded(name)

    def setup(self, stage: str | None = None) -> None:
        for name in [n for n in self.stages_to_read(stage) if n not in self.datasets]:
            dataset = self.encoded(name)
            if dataset is not None:
                self.datasets[name] = dataset
            elif stage is not None and name != "validation":  # validation is optional in fit
                raise ValueError(f"no data for stage {name!r}: split {self.splits[name]!r} not found")

    def _loader(self, stage: str, train: bool = False) -> DataLoader:
        h = self.hparams
        settings = LoaderSettings(h.batch_size if train else (h.eval_batch_size or h.batch_size), self.collator(train),
                                  h.num_workers, seed=int(os.environ.get("PL_GLOBAL_SEED", 0)))
        if not train:
            return evaluation_loader(self.datasets[stage], settings)
        if h.get("streaming"):
            encode = RowEncoder(self.task_data, self.encoder, self.columns, self.labels)
            return streaming_loader(self.train_stream, encode, settings, h.shuffle_buffer, self.trainer,
                                    batches_taken(self), validates="validation" in self.datasets)
        return training_loader(self.datasets[stage], settings, self.trainer, trainer_position(self),
                               group_by_length=h.get("group_by_length", False))

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("validation") if "validation" in self.datasets else []

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict")
