"""The shared DataModule: reads a hub dataset or local files and casts the task into a format."""

from __future__ import annotations

import difflib
import os
from functools import cached_property

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from ..backbone import TASK_FORMATS, ArchitectureFacts, load_config, resolve_path
from ..tasks import get_task
from .classification import (
    PAIR_TEMPLATES,
    ClassificationEncoder,
    LabelSet,
    label_ids,
    resolve_labels,
    texts,
    warn_truncated,
)
from .collate import Collator, EpochShuffleSampler, ListDataset, ResumableLoader, trainer_position, training_share
from .ner import NerEncoder, read_tagged, resolve_tags
from .qa import SPAN_LABELS, QaCollator, QaEncoder, read_questions
from .sources import RawSplit, SplitReader, check_encoding

STAGES = ("train", "validation", "test", "predict")


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
        task: str = "classification",
        task_format: str = "head",
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
        stride: int = 128,
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
        get_task(task, task_format)  # an unknown task, or a format the task lacks, fails here
        if not backbone:
            raise ValueError("data.init_args.backbone is empty (the CLI links it from model.init_args.backbone)")
        # Kept in checkpoints, not sent to loggers: the model logs the linked values (label names).
        self.save_hyperparameters(logger=False)
        self.splits = {"train": "train", "validation": "validation", "test": "test", "predict": "test"}
        self.splits.update(splits or {})
        unknown = set(self.splits) - set(STAGES)
        if unknown:
            raise ValueError(f"data.init_args.splits has unknown stages {sorted(unknown)}; use {STAGES}")
        check_encoding(encoding)
        check_data_files(data_files, self.splits)
        self.datasets: dict[str, ListDataset] = {}

    # --- what the model needs to know, linked by the CLI at instantiation -----------------------
    @cached_property
    def reader(self) -> SplitReader:
        h = self.hparams
        return SplitReader(h.dataset, h.dataset_config, h.data_files, h.get("encoding", "utf-8"))

    @cached_property
    def labels(self) -> LabelSet:
        """The label (ner: tag) names and how the data's values find them (by value, or integer ids
        as indices where the names come from the config or a ClassLabel feature)."""
        if self.hparams.task == "qa":
            return LabelSet(list(SPAN_LABELS), True, "the span head")
        train = None if self.hparams.label_names else self.reader.get(self.splits["train"])
        if self.hparams.task == "ner":
            return resolve_tags(self.hparams.label_names, train, self.hparams.tags_column)
        return resolve_labels(self.hparams.label_names, train, self.hparams.label_column)

    @property
    def label_names(self) -> list[str]:
        return self.labels.names

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @cached_property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        # Words of a tagged sentence are tokenized one by one: byte-level BPE needs the space a
        # word has inside a sentence (other tokenizers ignore the flag).
        words = {"add_prefix_space": True} if self.hparams.task_format == "token" else {}
        tokenizer = AutoTokenizer.from_pretrained(resolve_path(self.hparams.backbone), **words)
        if tokenizer.pad_token is None:  # GPT-2 style tokenizers: pad with EOS, masked out anyway
            tokenizer.pad_token = tokenizer.eos_token
        if self.facts.is_decoder_only:
            tokenizer.padding_side = "left"
        return tokenizer

    @cached_property
    def facts(self) -> ArchitectureFacts:
        return ArchitectureFacts.from_config(load_config(self.hparams.backbone))

    @cached_property
    def encoder(self) -> ClassificationEncoder | NerEncoder | QaEncoder:
        h = self.hparams
        if h.task == "qa":
            if h.task_format == "span" and h.stride >= h.max_length // 2:  # windows overlap by stride
                raise ValueError(f"data.init_args.stride={h.stride} must be below half of max_length={h.max_length}")
            return QaEncoder(self.tokenizer, h.task_format, self.facts.is_encoder_decoder, h.template, h.max_length, h.stride)
        if h.task == "ner":
            return NerEncoder(self.tokenizer, h.task_format, self.facts.is_encoder_decoder, self.label_names,
                              h.template, h.max_length)
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
    def template_virtual_tokens(self) -> int:
        """How many ``[P:n]`` virtual tokens the template holds (P-tuning)."""
        return getattr(self.encoder, "virtual_tokens", 0)

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
        if h.task == "ner":
            return self._encode_ner(stage, split)
        if h.task == "qa":
            return self._encode_qa(stage, split)
        text = texts(split, h.text_column, "text_column")
        pair = texts(split, h.text_pair_column, "text_pair_column") if h.text_pair_column else None
        labels = label_ids(split, h.label_column, self.labels, required=stage != "predict")
        ids = split.column(h.id_column, "id_column") if h.id_column else list(range(len(text)))
        features, truncated = self.encoder.encode(text, pair)
        warn_truncated(split.source, truncated, len(text), h.max_length)
        for feature, example_id, label in zip(features, ids, labels):
            feature["id"], feature["label"] = example_id, label
        return ListDataset(features)

    def _encode_ner(self, stage: str, split: RawSplit) -> ListDataset:
        h = self.hparams
        sentences, tags = read_tagged(split, h.tokens_column, h.tags_column, self.labels, required=stage != "predict")
        ids = split.column(h.id_column, "id_column") if h.id_column else list(range(len(sentences)))
        features, truncated = self.encoder.encode(sentences, tags)
        warn_truncated(split.source, truncated, len(sentences), h.max_length)
        for feature, example_id in zip(features, ids):
            feature["id"] = example_id
        return ListDataset(features)

    def _encode_qa(self, stage: str, split: RawSplit) -> ListDataset:
        h = self.hparams
        columns = {"question": h.question_column, "context": h.context_column, "answers": h.answers_column,
                   "id": h.id_column or "id"}
        examples = read_questions(split, columns, labelled=stage != "predict")
        if h.task_format == "text_to_text":
            features, truncated = self.encoder.text_features(examples, around_answer=stage == "train")
            warn_truncated(split.source, truncated, len(examples), h.max_length)
            for feature, e in zip(features, examples):
                feature.update(id=e.id, answers=e.answers, starts=e.starts, context=e.context)
            return ListDataset(features)
        windows = self.encoder.windows(examples)
        if stage == "train":  # training steps over windows
            return ListDataset([{**w, "id": e.id} for e, ws in zip(examples, windows) for w in ws])
        return ListDataset([
            {"id": e.id, "context": e.context, "answers": e.answers, "starts": e.starts, "windows": ws}
            for e, ws in zip(examples, windows)
        ])

    def _collator(self, with_candidates: bool) -> Collator:
        fmt, classification = self.hparams.task_format, self.hparams.task == "classification"
        if fmt == "span":
            return QaCollator(self.tokenizer.pad_token_id, self.tokenizer.padding_side, train=not with_candidates)
        return Collator(
            pad_id=self.tokenizer.pad_token_id,
            padding_side=self.tokenizer.padding_side,
            task_format=fmt,
            is_encoder_decoder=self.facts.is_encoder_decoder,
            class_targets=self.encoder.class_target_ids() if fmt == "text_to_text" and classification else None,
            with_candidates=with_candidates,
        )

    def _loader(self, stage: str, train: bool = False) -> DataLoader:
        h = self.hparams
        dataset = self.datasets[stage]
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        settings = dict(
            batch_size=h.batch_size if train else (h.eval_batch_size or h.batch_size),
            collate_fn=self._collator(with_candidates=not train),
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
