"""Streaming training data (each example once per pass across DDP ranks and workers, the pass
feeding the shuffle, exact resume, the settings it needs) and length-grouped batches."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.utils.data
from conftest import ner_sentences, review_rows, run_cli, write_conll, write_jsonl

from lit_prompts import PromptDataModule
from lit_prompts.data.collate import EpochShuffleSampler, LengthGroupedSampler
from lit_prompts.data.loaders import RowEncoder
from lit_prompts.data.streaming import StreamingDataset, StreamingLoader

LABELS = ["negative", "positive"]


@pytest.fixture
def shards(tmp_path) -> list[str]:
    """Five json lines files of 7 to 15 reviews each, every review with its own id."""
    return [str(write_jsonl(tmp_path / f"part{n}.jsonl", review_rows(7 + 2 * n, seed=100 + n))) for n in range(5)]


def streaming_module(backbone: str, files: list[str], **options) -> PromptDataModule:
    return PromptDataModule(backbone=backbone, data_files={"train": files}, streaming=True, batch_size=4,
                            **{"label_names": LABELS, "id_column": "id", **options})


def stream_of(module: PromptDataModule, rank: int = 0, world_size: int = 1) -> StreamingDataset:
    encode = RowEncoder(module.task_data, module.encoder, module.columns, module.labels)
    return StreamingDataset(module.train_stream, encode, seed=5, buffer_size=6, rank=rank, world_size=world_size)


def ids_read(stream: StreamingDataset, epoch: int, worker: int, workers: int, monkeypatch) -> list[str]:
    """The ids one DataLoader worker of a rank reads in an epoch (its worker info simulated)."""
    stream.set_epoch(epoch)
    with monkeypatch.context() as patched:
        patched.setattr(torch.utils.data, "get_worker_info", lambda: SimpleNamespace(id=worker, num_workers=workers))
        return [feature["id"] for feature in stream]


@pytest.mark.parametrize("files", [4, 5], ids=["shards split by rank", "rows split by rank"])
def test_each_example_once_per_epoch_across_two_ranks_and_two_workers(files, shards, tiny_backbone, monkeypatch):
    module = streaming_module(tiny_backbone("bert"), shards[:files])
    everything = sorted(row["id"] for path in shards[:files] for row in map(json.loads, open(path)))
    streams = [stream_of(module, rank, 2) for rank in (0, 1)]
    orders = {}
    for epoch in (0, 1):
        parts = {(rank, worker): ids_read(streams[rank], epoch, worker, 2, monkeypatch)
                 for rank in (0, 1) for worker in (0, 1)}
        assert all(parts.values()), "every rank and worker reads some of the data"
        assert sorted(itertools.chain(*parts.values())) == everything, f"epoch {epoch}: each example exactly once"
        orders[epoch] = parts
    assert orders[0] != orders[1], "the epoch feeds the shuffle"
    again = {(r, w): ids_read(stream_of(module, r, 2), 1, w, 2, monkeypatch) for r in (0, 1) for w in (0, 1)}
    assert again == orders[1], "the same (seed, epoch) gives the same order"


def batch_ids(loader, count: int) -> list[list[str]]:
    return [batch["ids"] for batch in itertools.islice(iter(loader), count)]


def test_the_stream_goes_on_pass_after_pass_and_resumes_exactly(shards, tiny_backbone):
    module = streaming_module(tiny_backbone("bert"), shards[:2])  # 16 rows: 4 batches per pass
    collate = module.collator(True)
    loader = StreamingLoader(stream_of(module), batch_size=4, collate_fn=collate)
    run = batch_ids(loader, 10)
    first, second = [sorted(sum(run[i : i + 4], [])) for i in (0, 4)]
    assert first == second and len(first) == 16, "each pass reads every example once"
    assert run[:4] != run[4:8], "a new pass, a new order"

    taken = 0  # batches trained on, as Lightning's fit loop counts them
    interrupted = StreamingLoader(stream_of(module), batch_size=4, collate_fn=collate, taken_source=lambda: taken)
    batches = iter(interrupted)
    next(batches)  # Lightning fetches a batch ahead of the one it trains on (a stream has no length)
    for _ in range(6):  # into the second pass
        _, taken = next(batches), taken + 1
    state = interrupted.state_dict()
    assert state == {"pass": 1, "batches": 2}, "the place of the last batch trained on, not of the one fetched"
    resumed = StreamingLoader(stream_of(module), batch_size=4, collate_fn=collate)
    resumed.load_state_dict(state)
    assert batch_ids(resumed, 4) == run[6:10]


def test_streaming_asks_for_max_steps_and_validation_steps(shards, tiny_backbone, reviews):
    module = streaming_module(tiny_backbone("bert"), shards[:1])
    module.trainer = SimpleNamespace(max_steps=-1, val_check_interval=1.0, world_size=1)
    with pytest.raises(ValueError, match=r"streaming=true .* set trainer\.max_steps"):
        module.train_dataloader()
    with_validation = PromptDataModule(backbone=tiny_backbone("bert"), streaming=True, label_names=LABELS,
                                       data_files={"train": shards[:1], "validation": reviews["validation"]})
    with_validation.setup("fit")
    with_validation.trainer = SimpleNamespace(max_steps=10, val_check_interval=1.0, world_size=1)
    with pytest.raises(ValueError, match=r"trainer\.val_check_interval .* an integer"):
        with_validation.train_dataloader()
    assert "train" not in with_validation.datasets and len(with_validation.datasets["validation"]) == 16


def test_streaming_asks_for_label_names(shards, tiny_backbone):
    module = streaming_module(tiny_backbone("bert"), shards[:1], label_names=None)
    with pytest.raises(ValueError, match=r"streaming reads no rows in advance: give data\.init_args\.label_names"):
        module.labels


def without_ids(features: list[dict]) -> list[str]:
    """Features as comparable text, without their ids (streamed rows are numbered per chunk)."""
    return sorted(json.dumps({k: v for k, v in f.items() if k != "id"}, sort_keys=True) for f in features)


@pytest.mark.parametrize("kind", ["tsv", "conll"])
def test_streamed_tsv_and_conll_rows_encode_as_the_whole_split_does(kind, tiny_backbone, tmp_path):
    if kind == "tsv":  # integer labels, as SST-2 writes them: indices into the configured names
        rows = review_rows(20, seed=3)
        path = tmp_path / "train.tsv"
        path.write_text("text\tlabel\n" + "".join(f"{r['text']}\t{int(r['label'] == 'positive')}\n" for r in rows))
        options = {"label_names": LABELS}
    else:
        path = write_conll(tmp_path / "train.conll", ner_sentences(20, seed=4))
        options = {"task": "ner", "task_format": "token",
                   "label_names": ["O", *(f"{p}-{k}" for k in ("LOC", "MISC", "ORG", "PER") for p in "BI")]}
    settings = dict(backbone=tiny_backbone("bert"), data_files={"train": str(path)}, **options)
    whole = PromptDataModule(cache=False, **settings)
    whole.setup("fit")
    streamed = PromptDataModule(streaming=True, **settings)
    assert without_ids(list(stream_of(streamed))) == without_ids(whole.datasets["train"].features)


def test_a_mistake_in_a_streamed_file_names_the_file_row_and_column(tiny_backbone, tmp_path):
    rows = review_rows(6, seed=0)
    rows[3]["text"] = ""
    module = streaming_module(tiny_backbone("bert"), [str(write_jsonl(tmp_path / "train.jsonl", rows))])
    with pytest.raises(ValueError, match=r"train\.jsonl, the streamed row \{\"id\": \"r0-3\", \"text\": \"\".*: row 0, column 'text' is empty"):
        list(stream_of(module))


# --- length-grouped batches ------------------------------------------------------------------

def test_length_grouped_order_is_deterministic_and_covers_every_index_once():
    lengths = [random.Random(i).randint(3, 60) for i in range(103)]
    grouped = LengthGroupedSampler(lengths, batch_size=4, seed=3)
    epoch0, again = list(grouped), list(grouped)
    assert epoch0 == again and sorted(epoch0) == list(range(103))
    grouped.set_epoch(1)
    assert list(grouped) != epoch0 and sorted(grouped) == list(range(103))

    def padding(order):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b)
                   for b in (order[k : k + 4] for k in range(0, len(order), 4)))

    assert padding(epoch0) < padding(list(EpochShuffleSampler(103, seed=3))) / 3

    grouped.set_epoch(0)
    grouped.start = 8  # resumed after two batches
    assert list(grouped) == epoch0[8:]
    ranks = [list(LengthGroupedSampler(lengths, batch_size=4, seed=3, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 52 and set(ranks[0] + ranks[1]) == set(range(103))


def test_length_grouped_training_batches_hold_less_padding(tiny_backbone, reviews):
    def mean_padding(group_by_length: bool) -> float:
        module = PromptDataModule(backbone=tiny_backbone("bert"), data_files={"train": reviews["train"]}, batch_size=4,
                                  group_by_length=group_by_length)
        module.setup("fit")
        masks = [batch["attention_mask"] for batch in module.train_dataloader()]
        return sum((1 - m).sum().item() for m in masks) / len(masks)

    assert mean_padding(True) < mean_padding(False)


def test_a_streamed_fit_runs_its_steps_across_passes_with_workers(shards, tiny_backbone, reviews, tmp_path):
    files = {"train": shards[:2], "validation": reviews["validation"]}
    cli = run_cli("fit", "--model=PromptTuning", f"--model.backbone={tiny_backbone('bert')}", "--model.num_virtual_tokens=2",
                  "--data.data_files=" + json.dumps(files), "--data.streaming=true", "--data.label_names=[negative,positive]",
                  "--data.batch_size=4", "--data.num_workers=2", "--trainer.max_steps=6", "--trainer.val_check_interval=3",
                  root=tmp_path / "run")
    assert cli.trainer.global_step == 6
    assert "val/accuracy" in cli.trainer.callback_metrics
    # Two files, one per worker: 7 and 9 rows make 2 + 3 batches a pass; step 6 is the second pass's first.
    last = torch.load(Path(cli.trainer.log_dir) / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 6
    assert last["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"pass": 1, "batches": 1}]


def test_a_streamed_fit_resumed_in_mid_pass_ends_as_the_uninterrupted_one(shards, tiny_backbone, tmp_path):
    def fit(root: Path, steps: int, *extra: str):
        return run_cli("fit", "--model=PromptTuning", f"--model.backbone={tiny_backbone('bert')}", "--seed_everything=7",
                       "--model.num_virtual_tokens=2", "--model.lr_schedule=constant_with_warmup", "--model.warmup_steps=2",
                       "--data.data_files=" + json.dumps({"train": shards[:2]}), "--data.streaming=true",
                       "--data.label_names=[negative,positive]", "--data.batch_size=4", "--data.num_workers=2",
                       f"--trainer.max_steps={steps}", *extra, root=root)

    whole = fit(tmp_path / "whole", 9)
    fit(tmp_path / "parts", 6)  # stops one batch into the second pass
    last = tmp_path / "parts" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    resumed = fit(tmp_path / "parts", 9, f"--ckpt_path={last}")
    assert resumed.trainer.global_step == 9
    assert torch.equal(resumed.model.state_dict()["prompt.prompt"], whole.model.state_dict()["prompt.prompt"])


def test_a_length_grouped_fit_through_the_cli(tiny_backbone, reviews, tmp_path):
    cli = run_cli("fit", "--model=PromptTuning", f"--model.backbone={tiny_backbone('bert')}", "--model.num_virtual_tokens=2",
                  "--data.data_files=" + json.dumps({"train": reviews["train"], "validation": reviews["validation"]}),
                  "--data.group_by_length=true", "--data.batch_size=4", "--trainer.max_epochs=1", root=tmp_path)
    assert cli.trainer.global_step == 8  # 32 rows in batches of 4: every row once
    assert type(cli.trainer.train_dataloader.sampler).__name__ == "LengthGroupedSampler"
    assert (Path(cli.trainer.log_dir) / "prompt" / "prompt.safetensors").is_file()
