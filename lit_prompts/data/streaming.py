"""Streaming training data (``streaming: true``), for corpora that fit neither in memory nor on disk:
the training split's rows are read as they are needed, with ``datasets``' own streaming, and encoded
a few hundred at a time inside the DataLoader workers.

What ``datasets`` does here: it reads local csv / tsv / json lines files (CoNLL files through a
generator, one sentence at a time) or a hub dataset with ``streaming=True``; ``shuffle`` keeps a
buffer of rows and also shuffles the order of the shards (files), seeded by the seed plus the epoch
(``set_epoch``); ``split_dataset_by_node`` gives each DDP rank whole shards (when their number is a
multiple of the world size) or every world-size-th row; the DataLoader workers of a rank then split
that rank's shards between them. Every row is read once per pass over the data, by one rank and one
worker. Use several files to let several workers read at once: one file is one shard.

What streaming gives up, against the cached map-style splits:

* the length. The training stream has no end: the loader starts pass after pass (pass p shuffled with
  seed + p) and Lightning sees one endless epoch, so ``trainer.max_steps`` must say when training
  stops (schedulers read it too), validation runs every ``trainer.val_check_interval`` steps (an
  integer), and the progress bar shows no total. Ranks never wait for each other at the end of an
  epoch, even though their shares of a pass differ in size;
* cheap mid-epoch resume. A resumed run reads its pass again from the start and drops the batches
  already trained on (the order is the same, so the position is exact, but the rows are read again);
* inferred label sets: the labels come from ``label_names`` or from a ``ClassLabel`` feature of a hub
  dataset (no rows are read in advance);
* row numbers: an error names the row by its content, and an example's id, where no ``id_column``
  is given, is its number in the chunk of rows encoded together;
* SQuAD's nested json, a single document: give QA rows as json lines.

Validation, test and predict splits are not streamed: they are encoded and cached as usual.
"""

from __future__ import annotations

import json
import warnings
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import datasets
from datasets.distributed import split_dataset_by_node
from torch.utils.data import DataLoader, IterableDataset

from .conll import CONLL_SUFFIXES, conll_sentences
from .files import BUILDERS, csv_columns, integer_columns, split_files
from .labels import LabelSet
from .raw import DataFileError, RawSplit
from .sources import SplitReader

CHUNK_ROWS = 256  # rows encoded together: one tokenizer call for many rows, little memory


@dataclass
class RowStream:
    """A split's rows as a ``datasets`` stream; ``source`` names it in errors; csv / tsv cells are
    text (``cells_are_text``) until each chunk's integer columns are recognised, as ``read_files`` does."""

    rows: datasets.IterableDataset
    source: str
    cells_are_text: bool = False


def open_rows(reader: SplitReader, split: str) -> RowStream:
    """The split's rows from its local files or the hub dataset, read lazily."""
    if split in reader.data_files:
        originals, resolved, suffix = split_files(split, reader.data_files[split])
        source = ", ".join(originals)
        if suffix in CONLL_SUFFIXES:  # a list in gen_kwargs is what datasets shards: one shard per file
            rows = datasets.IterableDataset.from_generator(
                conll_sentences, gen_kwargs={"paths": resolved, "names": originals, "encoding": reader.encoding})
            return RowStream(rows, source)
        builder, options = BUILDERS[suffix]
        if builder == "csv":
            columns = {tuple(csv_columns(p, o, f"data_files {split!r}", options, reader.encoding))
                       for p, o in zip(resolved, originals)}
            if len(columns) != 1:
                raise DataFileError(f"{source}: the files of one split need the same header, found {sorted(columns)}")
            text = datasets.Features({c: datasets.Value("string") for c in columns.pop()})
            options = {**options, "features": text, "keep_default_na": False}
        rows = datasets.load_dataset(builder, data_files={split: resolved}, split=split, streaming=True,
                                     encoding=reader.encoding, **options)
        return RowStream(rows, source, cells_are_text=builder == "csv")
    if reader.dataset is None:
        raise ValueError(f"no data for split {split!r} to stream: name it in data.init_args.data_files")
    rows = datasets.load_dataset(reader.dataset, reader.dataset_config, split=split, streaming=True)
    return RowStream(rows, f"{reader.dataset}[{split}]")


def schema_split(stream: RowStream) -> RawSplit:
    """No rows, only the stream's features: a label set can come from a ``ClassLabel`` feature alone."""
    features = stream.rows.features or datasets.Features()
    return RawSplit(datasets.Dataset.from_dict({name: [] for name in features}, features=features), stream.source)


def stream_labels(read_labels: Callable, configured: list[str] | None, columns, stream: RowStream) -> LabelSet:
    """A task's label set read from the stream's features alone (a ``ClassLabel``); no rows are read."""
    try:
        return read_labels(configured, lambda: schema_split(stream), columns)
    except (ValueError, KeyError) as error:
        raise ValueError(f"{error.args[0]} (streaming reads no rows in advance: give data.init_args.label_names)") from error


class StreamingDataset(IterableDataset):
    """One pass over a rank's share of the rows per ``__iter__``, encoded ``CHUNK_ROWS`` at a time by
    ``encode`` (a split's rows -> features). ``set_epoch`` chooses the pass's shuffle; ``datasets``
    keeps the epoch in shared memory, so persistent workers see it too."""

    def __init__(self, stream: RowStream, encode: Callable[[RawSplit], list[dict]], seed: int,
                 buffer_size: int, rank: int = 0, world_size: int = 1):
        self.stream, self.encode = stream, encode
        shuffled = stream.rows.shuffle(seed=seed, buffer_size=buffer_size)
        self.rows = split_dataset_by_node(shuffled, rank=rank, world_size=world_size)
        self._warned = False

    @property
    def source(self) -> str:
        return self.stream.source

    def set_epoch(self, epoch: int) -> None:
        self.rows.set_epoch(epoch)

    def __iter__(self):
        chunk = []
        for row in self._read():
            chunk.append(row)
            if len(chunk) == CHUNK_ROWS:
                yield from self._encode(chunk)
                chunk = []
        if chunk:
            yield from self._encode(chunk)

    def _read(self):
        rows = iter(self.rows)
        while True:
            try:
                row = next(rows)
            except StopIteration:
                return
            except DataFileError:
                raise
            except Exception as error:  # noqa: BLE001 - whatever the readers raise, the file is at fault
                raise DataFileError(f"{self.source} (streamed): cannot be read: {error}") from error
            yield row

    def _split(self, chunk: list[dict], source: str) -> RawSplit:
        rows = datasets.Dataset.from_list(chunk, features=self.stream.rows.features)
        return RawSplit(integer_columns(rows) if self.stream.cells_are_text else rows, source)

    def _encode(self, chunk: list[dict]) -> list[dict]:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                features = self.encode(self._split(chunk, f"{self.source} (streamed, a chunk of {len(chunk)} rows)"))
        except (ValueError, KeyError) as error:
            raise self._locate(chunk, error) from error
        if caught and not self._warned:  # a warning per chunk would flood the log
            self._warned = True
            warnings.warn(f"{caught[0].message} (streaming: later warnings of this reader are not shown)",
                          caught[0].category, stacklevel=2)
        return features

    def _locate(self, chunk: list[dict], error: Exception) -> Exception:
        """The error of the chunk's first row that fails on its own, naming the row by its content: the
        shuffle has moved it, so its number in the chunk would not find it in the file."""
        for row in chunk:
            shown = json.dumps(row, default=str, ensure_ascii=False)
            try:
                self.encode(self._split([row], f"{self.source}, the streamed row {shown:.200}"))
            except (ValueError, KeyError) as found:
                return found
        return error


class StreamingLoader(DataLoader):
    """Training batches of a ``StreamingDataset``, pass after pass without end: ``trainer.max_steps``
    ends training. Its place in the stream (a pass, and how many of its batches were served) goes into
    checkpoints; a resumed run reads that pass again and drops the batches already trained on. Where
    Lightning hands back no place, ``taken_source`` (``collate.batches_taken``: how many batches the fit
    loop took, None outside a fit) tells how many batches of the run are done, and that many are
    dropped from the first pass on.

    Lightning fetches one batch ahead of the one it trains on when a loader has no length, so the
    place saved is that of the last batch the trainer took, looked up among the latest ones served.
    """

    def __init__(self, dataset: StreamingDataset, *args, taken_source: Callable[[], int | None] | None = None,
                 **kwargs):
        super().__init__(dataset, *args, **kwargs)
        self.taken_source = taken_source
        self._places: deque[tuple[int, int]] = deque([(0, 0)], maxlen=8)  # the start, then after each batch
        self._taken_before, self._served = 0, 0  # the trainer's count when this iteration began; batches since
        self._resume: dict | None = None

    def _taken(self) -> int | None:
        return self.taken_source() if self.taken_source is not None else None

    def state_dict(self) -> dict:
        taken = self._taken()
        ahead = 0 if taken is None else max(self._taken_before + self._served - taken, 0)
        current, served = self._places[-1 - min(ahead, len(self._places) - 1)]
        return {"pass": current, "batches": served}

    def load_state_dict(self, state: dict) -> None:
        self._resume = dict(state)  # applied when the next iteration starts

    def __iter__(self):
        taken = self._taken() or 0
        if self._resume is not None:
            current, skip = self._resume["pass"], self._resume["batches"]
        else:
            current, skip = 0, taken
        self._resume = None
        self._places = deque([(current, skip)], maxlen=8)
        self._taken_before, self._served = taken, 0
        while True:
            self.dataset.set_epoch(current)
            in_pass = 0
            for batch in super().__iter__():
                in_pass += 1
                if skip:  # trained on before the run was resumed
                    skip -= 1
                    continue
                self._served += 1
                self._places.append((current, in_pass))
                yield batch
            if not in_pass:
                raise ValueError(f"{self.dataset.source}: the training stream holds no examples for this process")
            current += 1
