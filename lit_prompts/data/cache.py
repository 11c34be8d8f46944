"""The on-disk cache of encoded splits: a split is read, checked and tokenized once, by one process,
into Arrow files that every process of the run (and every later run) memory-maps.

Layout of the cache folder::

    splits/<key>/      one encoded split: the Arrow files and state of ``datasets``' ``save_to_disk``,
                       then ``lit_prompts.json``: the key, the row count, each file's size and content
                       hash, the feature shape and the warnings the encoding gave
    labels/<key>.json  a label set read from the training data, so that a later run need not read it

The key (``SplitCache.digest``) hashes everything the features depend on (the data module passes the
data's identity, tokenizer, template, max_length, ...) with the cache format and library versions.

An entry is written into a temporary folder and renamed into place when whole (a rename is atomic):
a reader sees all of an entry or none of it. Before an entry is read, its manifest, every file's
size and content hash and its row count are checked; a damaged entry (a truncated file, a missing
state file) is removed with a warning and built again, never read. Two processes that build the same
entry at once (two nodes over a shared folder) both write it; the first rename wins.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TypeVar

import datasets
import transformers
from datasets.fingerprint import Hasher
from lightning.pytorch.utilities import rank_zero_warn

from .arrow_features import ArrowSplit, FeatureShape, UnsupportedFeatures, features_to_arrow
from .sources import file_digest

CACHE_FORMAT = 1  # bump when the features an encoder makes, or this layout, change
CACHE_VARIABLE = "LIT_PROMPTS_DATA_CACHE"
MANIFEST = "lit_prompts.json"
STALE_SECONDS = 24 * 3600  # a temporary folder this old was left by an interrupted write
T = TypeVar("T")


def default_cache_dir() -> Path:
    """``$LIT_PROMPTS_DATA_CACHE``, else ``lit_prompts`` under the ``datasets`` cache (HF_DATASETS_CACHE)."""
    return Path(os.environ.get(CACHE_VARIABLE) or Path(datasets.config.HF_DATASETS_CACHE) / "lit_prompts")


def _package_version() -> str:
    try:
        return version("lit_prompts")
    except PackageNotFoundError:
        return "unknown"


def tokenizer_fingerprint(tokenizer) -> str:
    """A tokenizer's name and a hash of what decides its ids: the whole fast-tokenizer definition
    (vocabulary, normalizer, pre-tokenizer, special-token template) or a slow one's vocabulary, its
    special tokens (the pad token also stands for P-tuning's virtual tokens) and its flags."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # Without the truncation and padding of the last call: transformers sets them on each call.
        definition = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("truncation", "padding")}
    else:
        definition = sorted(tokenizer.get_vocab().items())
    special = {name: str(getattr(tokenizer, name, None)) for name in
               ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")}
    flags = {name: getattr(tokenizer, name, None) for name in ("add_bos_token", "add_eos_token", "add_prefix_space")}
    described = json.dumps([type(tokenizer).__name__, definition, special, flags], sort_keys=True, default=str)
    return f"{tokenizer.name_or_path}:{Hasher.hash(described)}"


def capture_warnings(produce: Callable[[], T]) -> tuple[T, list[str]]:
    """``produce()``'s result and the messages of the UserWarnings it gave (shown here as well): a
    cached split replays them (``replay_warnings``), so a truncation is reported on every run."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = produce()
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return result, [str(w.message) for w in caught if w.category is UserWarning]


def replay_warnings(messages: list[str]) -> None:
    for message in messages:
        rank_zero_warn(message)


@contextmanager
def _quiet_progress():
    was_disabled = datasets.utils.are_progress_bars_disabled()
    datasets.utils.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.utils.enable_progress_bars()


def _sync(folder: Path) -> None:
    """Flush the folder's files to disk before the rename publishes them."""
    for path in folder.iterdir():
        with open(path, "rb") as f:
            os.fsync(f.fileno())


class SplitCache:
    """Encoded splits (and label sets read from data) in a cache folder (default: ``default_cache_dir``)."""

    def __init__(self, folder: str | os.PathLike | None = None):
        self.folder = Path(folder).expanduser() if folder else default_cache_dir()

    # --- keys --------------------------------------------------------------------------------
    def canonical(self, key: dict) -> str:
        versions = {"lit_prompts": _package_version(), "transformers": transformers.__version__,
                    "datasets": datasets.__version__}
        return json.dumps({"format": CACHE_FORMAT, "versions": versions, **key}, sort_keys=True, default=str)

    def digest(self, key: dict) -> str:
        return Hasher.hash(self.canonical(key))

    def entry(self, key: dict) -> Path:
        return self.folder / "splits" / self.digest(key)

    # --- encoded splits ----------------------------------------------------------------------
    def load(self, key: dict) -> tuple[ArrowSplit, list[str]] | None:
        """The split stored under ``key`` and the warnings its encoding gave; None where there is none,
        or it was damaged (then it is removed, with a warning)."""
        entry = self.entry(key)
        if not entry.exists():
            return None
        manifest, problem = self._verify(entry, self.canonical(key))
        rows = None
        if problem is None:
            try:
                rows = datasets.load_from_disk(str(entry))
            except Exception as error:  # noqa: BLE001 - whatever the reader says, the entry is unusable
                problem = f"datasets cannot load it: {error}"
        if problem is None and len(rows) != manifest["rows"]:
            problem = f"it holds {len(rows)} rows, its manifest says {manifest['rows']}"
        if problem is not None:
            rank_zero_warn(f"data cache entry {entry} is damaged ({problem}): it is removed and built again")
            self._remove(entry)
            return None
        return ArrowSplit(rows, FeatureShape.from_json(manifest["shape"])), manifest["warnings"]

    def store(self, key: dict, features: list[dict], messages: list[str], source: str) -> ArrowSplit | None:
        """Write the features under ``key`` and return them memory-mapped; None (with a warning) where
        Arrow cannot hold them as they are: the caller keeps them in memory."""
        try:
            rows, shape = features_to_arrow(features)
        except UnsupportedFeatures as error:
            rank_zero_warn(f"{source}: the encoded split is kept in memory, not cached: {error}")
            return None
        splits = self.folder / "splits"
        splits.mkdir(parents=True, exist_ok=True)
        self._sweep(splits)
        final = self.entry(key)
        # Not mkdtemp, whose folder only its owner may read: an entry keeps the umask's permissions.
        partial = splits / f".tmp-{final.name}-{os.getpid()}-{secrets.token_hex(4)}"
        partial.mkdir()
        try:
            with _quiet_progress():
                rows.save_to_disk(str(partial))
            _sync(partial)
            files = {p.name: [p.stat().st_size, file_digest(str(p))] for p in sorted(partial.iterdir())}
            manifest = {"key": json.loads(self.canonical(key)), "rows": len(rows), "files": files,
                        "shape": shape.to_json(), "warnings": messages}
            (partial / MANIFEST).write_text(json.dumps(manifest, indent=1))
            _sync(partial)
            try:
                os.rename(partial, final)
            except OSError:
                if not final.exists():
                    raise
                # Another process wrote the same entry first: its copy is used, this one dropped.
        finally:
            if partial.exists():
                shutil.rmtree(partial, ignore_errors=True)
        found = self.load(key)
        return found[0] if found else None

    def _verify(self, entry: Path, canonical: str) -> tuple[dict | None, str | None]:
        """The entry's manifest, and what is wrong with the entry (None: nothing)."""
        try:
            manifest = json.loads((entry / MANIFEST).read_text())
        except FileNotFoundError:
            return None, f"no {MANIFEST}"
        except (OSError, ValueError) as error:
            return None, f"{MANIFEST} cannot be read: {error}"
        expected = {"key": object, "rows": int, "files": dict, "shape": dict, "warnings": list}
        if not isinstance(manifest, dict) or not all(isinstance(manifest.get(k), t) for k, t in expected.items()):
            return None, f"{MANIFEST} is incomplete"
        if json.dumps(manifest["key"], sort_keys=True) != canonical:
            return None, "its manifest was written for another key"
        for name, (size, digest) in manifest["files"].items():
            path = entry / name
            if not path.is_file():
                return None, f"{name} is missing"
            if path.stat().st_size != size:
                return None, f"{name} has {path.stat().st_size} bytes, {size} were written"
            if file_digest(str(path)) != digest:
                return None, f"{name} does not hold what was written (its content hash differs)"
        return manifest, None

    def _remove(self, entry: Path) -> None:
        # Moved aside first, so that no process ever sees a half-removed entry under its key.
        doomed = Path(tempfile.mkdtemp(prefix=f".tmp-{entry.name}-removed-", dir=entry.parent))
        try:
            os.rename(entry, doomed / entry.name)
        except OSError:
            pass  # another process removed it first
        shutil.rmtree(doomed, ignore_errors=True)

    @staticmethod
    def _sweep(splits: Path) -> None:
        """Remove the temporary folders of writes interrupted long ago."""
        for path in splits.glob(".tmp-*"):
            try:
                if time.time() - path.stat().st_mtime > STALE_SECONDS:
                    shutil.rmtree(path, ignore_errors=True)
            except FileNotFoundError:
                pass

    # --- label sets read from data -----------------------------------------------------------
    def _labels_path(self, key: dict) -> Path:
        return self.folder / "labels" / f"{self.digest(key)}.json"

    def load_labels(self, key: dict) -> dict | None:
        path = self._labels_path(key)
        try:
            saved = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            rank_zero_warn(f"data cache file {path} is damaged ({error}): the labels are read from the data again")
            path.unlink(missing_ok=True)
            return None
        if json.dumps(saved.get("key"), sort_keys=True) != self.canonical(key):
            return None
        return saved["labels"]

    def store_labels(self, key: dict, labels: dict) -> None:
        path = self._labels_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".tmp-{path.name}-{os.getpid()}")
        partial.write_text(json.dumps({"key": json.loads(self.canonical(key)), "labels": labels}))
        os.replace(partial, path)


def load_or_build(cache: SplitCache, key: dict, build: Callable[[], object], source: str):
    """The split under ``key`` from the cache (no reading or tokenizing at all), else ``build()``'s
    (it reads, checks and encodes: a mistake in the data stops it before anything is written), then
    stored. Warnings the encoding gave are shown again each time the split is read from the cache."""
    found = cache.load(key)
    if found is not None:
        dataset, messages = found
        replay_warnings(messages)
        return dataset
    dataset, messages = capture_warnings(build)
    stored = cache.store(key, dataset.features, messages, source)
    return dataset if stored is None else stored
