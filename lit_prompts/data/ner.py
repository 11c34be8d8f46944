"""Named-entity recognition: BIO tag sets, reading tagged sentences, and encoding into two task formats.

token         words -> sub-tokens; each word's tag sits on its first sub-token, -100 elsewhere;
              a trainable head tags every token
text_to_text  template -> source; target = the entities linearised (``EU [ORG]; German [MISC]``,
              or ``none``), generated at evaluation and parsed back into spans
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from itertools import accumulate

from transformers import PreTrainedTokenizerBase

from ..ner_spans import linearize
from .collate import Collator, ListDataset
from .encoding import Columns, EncoderSettings, Rows, example_ids, warn_truncated
from .labels import LabelSet
from .raw import RawSplit
from .templates import fit_to_length, target_ids

DEFAULT_NER_TEMPLATE = "Sentence: {text}\nEntities:"


def check_bio(tag: str, where: str) -> None:
    if tag != "O" and not (len(tag) > 2 and tag[:2] in ("B-", "I-")):
        raise ValueError(f"{where}: tag {tag!r} is not in the BIO scheme (O, B-TYPE, I-TYPE)")


def tag_order(tags) -> list[str]:
    """``O`` first, then by type and B before I."""
    return ["O", *sorted(set(tags) - {"O"}, key=lambda t: (t[2:], t[0] != "B"))]


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _tag_list(value, where: str, column: str) -> list:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ValueError(f"{where}: column {column!r} holds {value!r:.60}, not a list (one entry per word)")
    return list(value)


def resolve_tags(configured: list[str] | None, train: RawSplit | None, tags_column: str) -> LabelSet:
    """Tag names from the config, else the data's ``Sequence(ClassLabel)``, else the training tags
    (``O`` first, then by type and B before I); integer tags index only the first two."""
    if configured:
        for tag in configured:
            check_bio(tag, "data.init_args.label_names")
        return LabelSet(list(configured), True, "data.init_args.label_names")
    if train is None:
        raise ValueError("tag names unknown: give data.init_args.label_names or a train split")
    feature = train.rows.features.get(tags_column)
    inner = getattr(feature, "feature", None)
    if hasattr(inner, "names"):
        return LabelSet(list(inner.names), True, f"the ClassLabel feature of {train.source}")
    lines = train.rows["line"][:] if "line" in train.rows.column_names else None
    seen = set()
    for row, row_tags in enumerate(train.column(tags_column, "tags_column")):
        where = lines[row] if lines else f"{train.source}: row {row}"
        if row_tags is None:
            raise ValueError(f"{where}: no tags in column {tags_column!r}")
        for tag in _tag_list(row_tags, where, tags_column):
            if _integer(tag):
                raise ValueError(f"{where}: tag {tag} is an integer id, but nothing names the ids: give "
                                 "data.init_args.label_names, the tag names in id order (e.g. [O, B-PER, I-PER, ...])")
            if str(tag) not in seen:
                check_bio(str(tag), where)
                seen.add(str(tag))
    return LabelSet(tag_order(seen), False, f"the tags of {train.source}", inferred=True)


def read_tagged(split: RawSplit, tokens_column: str, tags_column: str | None, tags: LabelSet, required: bool = False):
    """Per row: tokens and tag ids (None where unlabelled), checked; errors name file and line/row."""
    tokens = split.column(tokens_column, "tokens_column")
    has_tags = tags_column is not None and (required or tags_column in split.rows.column_names)
    row_tags_list = split.column(tags_column, "tags_column") if has_tags else [None] * len(tokens)
    lines = split.rows["line"][:] if "line" in split.rows.column_names else None
    names = tags.names
    index = {n: i for i, n in enumerate(names)}
    # Sequence(ClassLabel) ids stand for the feature's own names (see classification.label_ids).
    class_names = getattr(getattr(split.rows.features.get(tags_column), "feature", None), "names", None) if has_tags else None
    out_tokens, out_tags = [], []
    for row, (words, row_tags) in enumerate(zip(tokens, row_tags_list)):
        where = lines[row] if lines else f"{split.source}: row {row}"
        words = _tag_list(words, where, tokens_column)
        if not words or any(w is None or not str(w).strip() for w in words):
            raise ValueError(f"{where}: empty sentence or empty token")
        if row_tags is None:
            if required:
                raise ValueError(f"{where}: no tags in column {tags_column!r}")
            out_tokens.append([str(w) for w in words])
            out_tags.append(None)
            continue
        row_tags = _tag_list(row_tags, where, tags_column)
        if len(row_tags) != len(words):
            raise ValueError(f"{where}: {len(words)} tokens but {len(row_tags)} tags")
        ids = []
        for tag in row_tags:
            if _integer(tag) and class_names and 0 <= tag < len(class_names) and class_names[tag] in index:
                ids.append(index[class_names[tag]])
                continue
            if _integer(tag):
                if not tags.by_index:
                    raise ValueError(f"{where}: tag {tag} is an integer id, but the tag set {names} was read from "
                                     f"{tags.origin} and is matched by name: give data.init_args.label_names, the "
                                     "tag names in id order")
                if not 0 <= tag < len(names):
                    raise ValueError(f"{where}: tag id {tag} is outside the tag set {names}")
                ids.append(tag)
                continue
            check_bio(str(tag), where)
            if str(tag) not in index:
                kinds = {t[2:] for t in [*names, str(tag)] if t != "O"}
                raise tags.unknown(tag, where, "tag", tag_order({f"{p}-{k}" for k in kinds for p in "BI"}))
            ids.append(index[str(tag)])
        out_tokens.append([str(w) for w in words])
        out_tags.append(ids)
    return out_tokens, out_tags


@dataclass
class NerEncoder:
    """Sentences (word lists) into features of the ``token`` or ``text_to_text`` format: the
    ``TaskData`` of NER."""

    tokenizer: PreTrainedTokenizerBase
    task_format: str
    is_encoder_decoder: bool
    tag_names: list[str]
    template: str | None
    max_length: int

    virtual_tokens = 0  # NER templates hold no [P:n] markers

    @classmethod
    def tokenizer_options(cls, task_format: str) -> dict:
        # Words of a tagged sentence are tokenized one by one: byte-level BPE needs the space a
        # word has inside a sentence (other tokenizers ignore the flag).
        return {"add_prefix_space": True} if task_format == "token" else {}

    @classmethod
    def read_labels(cls, configured: list[str] | None, train: Callable[[], RawSplit | None], columns: Columns) -> LabelSet:
        return resolve_tags(configured, None if configured else train(), columns.tags)

    @classmethod
    def build(cls, settings: EncoderSettings) -> NerEncoder:
        return cls(settings.tokenizer, settings.task_format, settings.is_encoder_decoder, settings.labels.names,
                   settings.template, settings.max_length)

    @classmethod
    def read(cls, split: RawSplit, stage: str, columns: Columns, labels: Callable[[], LabelSet]) -> Rows:
        sentences, tags = read_tagged(split, columns.tokens, columns.tags, labels(), required=stage != "predict")
        return Rows(split.source, stage, example_ids(split, columns.id, len(sentences)), sentences, targets=tags)

    def encode(self, rows: Rows) -> ListDataset:
        features, truncated = self.encode_sentences(rows.inputs, rows.targets)
        warn_truncated(rows.source, truncated, len(rows.inputs), self.max_length)
        for feature, example_id in zip(features, rows.ids):
            feature["id"] = example_id
        return ListDataset(features)

    def collator(self, train: bool) -> Callable[[list[dict]], dict]:
        return Collator.for_tokenizer(self.tokenizer, self.task_format, self.is_encoder_decoder, train)

    def verbalizer_token_ids(self) -> None:
        return None

    def encode_sentences(self, sentences: list[list[str]], tags: list[list[int] | None]) -> tuple[list[dict], int]:
        """Features of sentences (their tag ids, None where unlabelled), and how many were truncated."""
        if self.task_format == "token":
            return self._encode_token(sentences, tags)
        return self._encode_text(sentences, tags)

    def _encode_token(self, sentences, tags) -> tuple[list[dict], int]:
        enc = self.tokenizer(sentences, is_split_into_words=True, truncation=True, max_length=self.max_length)
        features, truncated = [], 0
        for i, words in enumerate(sentences):
            word_ids = enc.word_ids(i)
            # The first sub-token of each word carries the word's tag; -1 marks every other position.
            word_index, previous = [], None
            for w in word_ids:
                word_index.append(w if w is not None and w != previous else -1)
                previous = w
            if max(word_index) < len(words) - 1:
                truncated += 1
            feature = {"input_ids": enc["input_ids"][i], "word_index": word_index, "tokens": words, "tags": tags[i]}
            if "token_type_ids" in enc:
                feature["token_type_ids"] = enc["token_type_ids"][i]
            features.append(feature)
        return features, truncated

    def _encode_text(self, sentences, tags) -> tuple[list[dict], int]:
        template = self.template or DEFAULT_NER_TEMPLATE
        texts = [" ".join(words) for words in sentences]
        fitted = fit_to_length(self.tokenizer, lambda i, text: template.format(text=text), texts, self.max_length)
        features, targets, truncated = [], [], 0
        for words, text, row_tags, (ids, kept_chars) in zip(sentences, texts, tags, fitted):
            truncated += kept_chars < len(text)
            features.append({"input_ids": ids, "tokens": words, "tags": row_tags})
            if row_tags is not None:
                # The target names the entities of the words the input still holds; evaluation
                # keeps scoring against every word's tag.
                word_ends = list(accumulate(len(w) + 1 for w in words))  # word i ends before word_ends[i] - 1
                visible = bisect_right(word_ends, kept_chars + 1)  # how many words are kept whole
                targets.append(" " + linearize(words[:visible], [self.tag_names[t] for t in row_tags[:visible]]))
        labelled = [f for f in features if f["tags"] is not None]
        for feature, ids in zip(labelled, target_ids(self.tokenizer, self.is_encoder_decoder, targets)):
            feature["target_ids"] = ids
        return features, truncated
