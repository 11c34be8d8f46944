"""Prompt pools: selection per example, the key-pull loss, the frequency-penalised selection, soft
attention, the selection histogram, parameter counts, resume, and the CLI end to end."""

from __future__ import annotations

import csv
import inspect
import json

import pytest
import torch
from conftest import data_files_arg, run_cli

import lit_prompts
from lit_prompts import PromptPool
from lit_prompts.data.collate import Collator
from lit_prompts.methods import PoolPrompt
from lit_prompts.methods.base import PromptContext

K, P, S = 4, 2, 3  # pool size, prompt length, shared prompt length


def make_pool(tiny_backbone, arch="bert", **kwargs):
    torch.manual_seed(0)
    kwargs = {"pool_size": K, "prompt_length": P, "shared_length": S, "label_names": ["negative", "positive"], **kwargs}
    return PromptPool(backbone=tiny_backbone(arch), **kwargs).eval()


def two_texts(model):
    """The pool's view of two texts (a ``PromptContext`` from the prompted backbone)."""
    ids = torch.tensor([[2, 400, 401, 402, 3], [2, 300, 301, 302, 3]])
    return model.backbone.context({"input_ids": ids, "attention_mask": torch.ones_like(ids)})


@torch.no_grad()
def test_each_example_gets_its_own_prompts(tiny_backbone):
    model = make_pool(tiny_backbone, top_k=1)
    context = two_texts(model)
    query = model.prompt.queries(context)
    model.prompt.keys[:2] = query  # entry 0 matches example 0, entry 1 example 1
    model.prompt.keys[2:] = -query
    prompt = model.prompt(context).prepend
    assert prompt.shape == (2, S + P, model.facts.hidden_size)
    # The shared prompt in front for every example, then the example's own selection.
    assert torch.equal(prompt[0, :S], model.prompt.shared) and torch.equal(prompt[1, :S], model.prompt.shared)
    assert torch.equal(prompt[0, S:], model.prompt.pool[0]) and torch.equal(prompt[1, S:], model.prompt.pool[1])
    alone = make_pool(tiny_backbone, top_k=1, shared_length=0)  # L2P's pool alone
    alone.prompt.keys.copy_(model.prompt.keys)
    assert alone.prompt.shared is None and torch.equal(alone.prompt(context).prepend, prompt[:, S:])

    # Deep placement: per-example key/value prefixes in every layer, N·P positions long.
    deep = make_pool(tiny_backbone, placement="layers", top_k=2)
    output = deep.prompt(two_texts(deep))
    assert output.prepend is None
    _, shift = deep.backbone.prompted_inputs({"input_ids": torch.ones(2, 5, dtype=torch.long),
                                              "attention_mask": torch.ones(2, 5, dtype=torch.long)}, output)
    assert shift == 0  # nothing in front of the input: the prompts are in the layers
    # Per-example hidden-state prompts, projected by each layer when it runs.
    installed = deep.backbone.injector.layers[0][1].lit_prompts_prefix
    assert installed.shape == (2, S + 2 * P, deep.facts.hidden_size)
    assert torch.equal(installed[1, :S], deep.prompt.shared[0])  # layer 0's shared prompt
    key, value = deep.backbone.layer_kv(output.layer_hidden)[0]
    assert key.shape == value.shape == (2, deep.facts.num_key_value_heads, S + 2 * P, deep.facts.head_dim)


def test_key_pull_loss_draws_selected_keys_to_their_queries(tiny_backbone):
    model = make_pool(tiny_backbone, top_k=2, key_pull_weight=1.0)
    context = two_texts(model)
    query = model.prompt.queries(context)

    def chosen_similarity():
        sim = torch.nn.functional.normalize(query, dim=-1) @ torch.nn.functional.normalize(model.prompt.keys, dim=-1).T
        return sim.topk(2, dim=-1).values.mean()

    before = chosen_similarity().item()
    optimizer = torch.optim.SGD([model.prompt.keys], lr=1.0)
    for _ in range(5):
        output = model.prompt(context)
        optimizer.zero_grad()
        output.aux_loss.backward()
        optimizer.step()
    assert chosen_similarity().item() > before + 0.05


def fixed_queries(pool: PoolPrompt, rows: int = 16) -> PromptContext:
    """A fixed query set that plain similarity sends to two keys: the keys are the first K unit vectors
    and every query is about (0.5, 0.5, 0.3, ..., 0.3) normalised, so cos(q, k_0) ≈ cos(q, k_1) ≈ 0.45
    and ≈ 0.27 for the other eight keys (a gap g ≈ 0.18), with a little noise."""
    size, width = pool.keys.shape
    pool.keys.data.copy_(torch.eye(width)[:size])
    direction = torch.zeros(width)
    direction[:2], direction[2:size] = 0.5, 0.3
    queries = direction / direction.norm() + 0.02 * torch.randn(rows, width, generator=torch.Generator().manual_seed(0))
    return PromptContext(input_embeds=torch.zeros(rows, 1, width), attention_mask=torch.ones(rows, 1, dtype=torch.long),
                         frozen_hidden=lambda: queries[:, None])


def picks_after_training_steps(frequency_penalty: float, steps: int = 50) -> torch.Tensor:
    pool = PoolPrompt(pool_size=10, length=1, hidden_size=16, top_k=2, frequency_penalty=frequency_penalty)
    context = fixed_queries(pool)
    pool.train()
    with torch.no_grad():
        for _ in range(steps):
            pool(context)
    return pool.picks


def test_frequency_penalty_spreads_the_picks_of_a_fixed_query_set():
    """Keys held still, the same 16 queries selected 50 times. Plain similarity picks keys 0 and 1 for
    every query: 2 entries, half the picks each. With the penalty the picks balance where β·(f_0 - f_i) = g:
    f_0 - f_i ≈ 1.8 and the shares sum to 1, so keys 0 and 1 take ≈ (1 + 0.8·1.8)/10 ≈ 0.24 each and the
    other eight ≈ (1 - 0.2·1.8)/10 ≈ 0.064 each."""
    collapsed = picks_after_training_steps(frequency_penalty=0.0)
    assert collapsed.sum() == 50 * 16 * 2  # every pick counted
    share = collapsed / collapsed.sum()
    assert (share >= 0.01).sum() == 2 and share.max() == 0.5

    beta = inspect.signature(PromptPool).parameters["frequency_penalty"].default
    assert beta == 0.1  # the default spreads picks: it is what this test measures
    spread = picks_after_training_steps(frequency_penalty=beta)
    share = spread / spread.sum()
    assert (share >= 0.01).sum() == 10  # every entry takes part
    assert share.max() < 0.3 and share.min() > 0.04  # near the balance above, far from 0.5
    assert torch.equal(spread, picks_after_training_steps(frequency_penalty=beta))  # deterministic


@torch.no_grad()
def test_evaluation_selects_by_plain_similarity():
    pool = PoolPrompt(pool_size=10, length=1, hidden_size=16, top_k=2, frequency_penalty=0.1)
    context = fixed_queries(pool)
    pool.train()
    for _ in range(5):
        pool(context)
    picks = pool.picks.clone()
    assert (picks[2:] > 0).any()  # training has moved picks off keys 0 and 1
    pool.eval()
    prompt = pool(context).prepend
    assert torch.equal(pool.picks, picks)  # evaluation counts nothing
    # Every query gets keys 0 and 1, its two best matches, as plain similarity ranks them.
    similarity = torch.nn.functional.normalize(pool.queries(context), dim=-1) @ pool.keys.T
    chosen = similarity.topk(2, dim=-1).indices
    assert set(chosen.flatten().tolist()) == {0, 1}
    assert torch.equal(prompt, pool.pool[chosen].flatten(1, 2))


@torch.no_grad()
def test_a_centred_query_selects_by_its_difference_from_the_mean_of_the_training_queries():
    """The fixed query set shares one direction, so plain similarity sends every query to keys 0 and 1. With
    ``center_query`` the pool selects by q - μ, μ the running mean of every training query (three batches of
    16 here), which the noise around the shared direction decides: evaluation spreads over more entries."""
    pool = PoolPrompt(pool_size=10, length=1, hidden_size=16, top_k=2, frequency_penalty=0.0, center_query=True)
    context = fixed_queries(pool)
    raw = context.frozen_mean_hidden()
    shift = torch.randn(16, generator=torch.Generator().manual_seed(1))
    others = [raw + shift, raw - shift]  # two more batches: μ averages all 48 queries, not the last batch
    pool.train()
    for queries in [raw, *others]:
        pool(PromptContext(context.input_embeds, context.attention_mask, frozen_hidden=lambda q=queries: q[:, None]))
    assert pool.queries_seen == 48
    mean = torch.cat([raw, *others]).mean(0)
    torch.testing.assert_close(pool.query_mean, mean, rtol=0, atol=1e-6)
    assert "query_mean" in pool.state_dict() and "query_mean" in pool.export()[2]  # exported with the prompt

    pool.eval()
    prompt = pool(context).prepend
    assert pool.queries_seen == 48  # evaluation leaves μ as training ended it
    similarity = torch.nn.functional.normalize(raw - mean, dim=-1) @ pool.keys.T
    chosen = similarity.topk(2, dim=-1).indices
    assert torch.equal(prompt, pool.pool[chosen].flatten(1, 2))
    assert len(set(chosen.flatten().tolist())) == 10  # where plain similarity picks {0, 1} for every query
    cast = PoolPrompt(pool_size=10, length=1, hidden_size=16, top_k=2, center_query=True).to(torch.bfloat16)
    cast.record_queries(torch.cat([raw.sum(0), raw.new_tensor([len(raw)])]))  # fp32 queries into a bf16 μ
    assert cast.query_mean.dtype == torch.bfloat16
    torch.testing.assert_close(cast.query_mean.float(), raw.mean(0), rtol=0, atol=1e-2)
    uncentred = PoolPrompt(pool_size=10, length=1, hidden_size=16, top_k=2, center_query=False)
    assert "query_mean" not in uncentred.state_dict()  # (prompts trained without it keep their tensors)


@pytest.mark.parametrize("selection,query,centred", [("hard", "backbone", False), ("soft", "backbone", False),
                                                     ("hard", "encoder", False), ("hard", "backbone", True)])
def test_a_pool_cast_to_bfloat16_selects_from_float32_queries_and_trains_its_keys(selection, query, centred):
    """The backbone's queries are fp32 whatever the prompt's dtype: a pool cast whole to bf16 (keys, μ, query
    encoder) ranks them in fp32, and with the same keys selects as its fp32 copy (a bf16 μ rounds the
    centred queries, so there only the dtypes are compared)."""
    settings = dict(pool_size=10, length=1, hidden_size=16, top_k=2, selection=selection, query=query, shared_length=2,
                    center_query=centred)
    pool = PoolPrompt(**settings)
    context = fixed_queries(pool)
    context.input_embeds = torch.randn(16, 3, 16, generator=torch.Generator().manual_seed(2))
    for tensor in pool.parameters():  # values bf16 holds exactly, so that both pools start equal
        tensor.data.copy_(torch.randn(tensor.shape).bfloat16().float() if tensor is pool.pool else tensor.bfloat16().float())
    cast = PoolPrompt(**settings).to(torch.bfloat16)
    cast.load_state_dict(pool.state_dict())
    pool.train(), cast.train()
    full, half = pool(context), cast(context)
    assert half.prepend.dtype == torch.bfloat16 and half.prepend.shape == full.prepend.shape
    if not centred:
        if selection == "hard":
            assert torch.equal(cast.picks, pool.picks)  # the same entries for every query
        torch.testing.assert_close(half.prepend.float(), full.prepend, rtol=0, atol=5e-2)
    (half.prepend.float().sum() + (half.aux_loss if half.aux_loss is not None else 0)).backward()
    assert cast.keys.grad.dtype == torch.bfloat16 and cast.keys.grad.abs().sum() > 0


def test_a_centred_pool_checkpoint_keeps_the_query_mean_and_how_many_queries_it_averages(tiny_backbone):
    model = make_pool(tiny_backbone, top_k=2, center_query=True)
    model.prompt.train()
    with torch.no_grad():
        for _ in range(3):
            model.prompt(two_texts(model))
    checkpoint = {"state_dict": model.state_dict()}
    model.on_save_checkpoint(checkpoint)
    assert torch.equal(checkpoint["state_dict"]["prompt.query_mean"], model.prompt.query_mean)
    assert checkpoint["lit_prompts"]["pool"]["queries_seen"] == 3 * 2
    assert torch.equal(model.export_tensors()["prompt.query_mean"], model.prompt.query_mean)
    resumed = make_pool(tiny_backbone, top_k=2, center_query=True)
    resumed.on_load_checkpoint(checkpoint)
    resumed.load_state_dict(checkpoint["state_dict"])
    assert torch.equal(resumed.prompt.query_mean, model.prompt.query_mean)
    assert resumed.prompt.queries_seen == 3 * 2


def test_picks_are_training_state_kept_by_checkpoints_not_prompt_tensors(tiny_backbone):
    model = make_pool(tiny_backbone, top_k=2)
    model.prompt.train()
    with torch.no_grad():
        for _ in range(3):
            model.prompt(two_texts(model))
    assert model.prompt.picks.sum() == 3 * 2 * 2
    # Not part of the prompt: neither in state_dict (so not in exports) nor a trainable tensor.
    assert not {"prompt.picks", "prompt.selection_weights"} & set(model.state_dict())
    checkpoint = {"state_dict": model.state_dict()}
    model.on_save_checkpoint(checkpoint)
    resumed = make_pool(tiny_backbone, top_k=2)
    resumed.on_load_checkpoint(checkpoint)
    assert torch.equal(resumed.prompt.picks, model.prompt.picks)
    assert torch.equal(resumed.prompt.selection_weights, model.prompt.selection_weights)


def test_a_checkpoint_without_the_shared_prompt_needs_shared_length_0(tiny_backbone):
    old = make_pool(tiny_backbone, shared_length=0)
    checkpoint = {"state_dict": old.state_dict(), "hyper_parameters": dict(old.hparams)}
    old.on_save_checkpoint(checkpoint)
    with pytest.raises(ValueError, match=r"no shared prompt .*--model.shared_length=0"):
        make_pool(tiny_backbone).on_load_checkpoint(checkpoint)
    make_pool(tiny_backbone, shared_length=0).on_load_checkpoint(checkpoint)


@pytest.mark.parametrize("arch,centred", [("gpt2", True), ("llama", True), ("bert", False), ("t5", False)])
def test_the_query_is_centred_by_default_on_decoder_only_backbones(arch, centred, tiny_backbone):
    model = make_pool(tiny_backbone, arch)
    assert (model.prompt.query_mean is not None) is centred
    # The choice is saved with the settings.
    assert model.hparams.center_query is centred and model.hparams_initial.center_query is centred
    assert make_pool(tiny_backbone, arch, center_query=not centred).prompt.settings["center_query"] is not centred


def test_a_decoder_pool_checkpoint_without_the_query_mean_needs_center_query_false(tiny_backbone):
    old = make_pool(tiny_backbone, "gpt2", center_query=False)  # as saved before centring was the default
    checkpoint = {"state_dict": old.state_dict(), "hyper_parameters": dict(old.hparams)}
    old.on_save_checkpoint(checkpoint)
    with pytest.raises(ValueError, match=r"no query mean .*--model.center_query=false"):
        make_pool(tiny_backbone, "gpt2").on_load_checkpoint(checkpoint)
    make_pool(tiny_backbone, "gpt2", center_query=False).on_load_checkpoint(checkpoint)


def test_the_pool_gives_as_many_input_positions_as_prompt_tuning_by_task(tiny_backbone):
    bert, tags = tiny_backbone("bert"), ["O", "B-PER", "I-PER"]
    ner = PromptPool(backbone=bert, task="ner", task_format="token", label_names=tags)
    assert (ner.prompt.shared.shape[0], ner.prompt.pool.shape[1]) == (80, 10)  # most positions shared
    assert (ner.hparams.shared_length, ner.hparams.prompt_length) == (80, 10)  # saved settings hold the lengths chosen
    assert ner.prompt_length() == 100 == lit_prompts.PromptTuning(backbone=bert, task="ner", task_format="token",
                                                                 label_names=tags).prompt_length()
    assert PromptPool(backbone=bert, label_names=["negative", "positive"]).prompt_length() == 20  # 10 + 2 x 5
    deep = PromptPool(backbone=bert, task="ner", task_format="token", label_names=tags, placement="layers")
    assert deep.prompt.pool.shape[2] == 5 and deep.prompt.shared.shape[1] == 10  # per layer: the usual lengths
    given = PromptPool(backbone=bert, task="ner", task_format="token", label_names=tags, prompt_length=3, shared_length=0)
    assert given.prompt.shared is None and given.prompt_length() == 6
    one_pick = PromptPool(backbone=bert, task="ner", task_format="token", label_names=tags, top_k=1)
    assert (one_pick.hparams.shared_length, one_pick.prompt_length()) == (90, 100)  # the shared prompt takes the rest


def test_a_negative_frequency_penalty_is_refused(tiny_backbone):
    with pytest.raises(ValueError, match="frequency_penalty=-0.1"):
        make_pool(tiny_backbone, frequency_penalty=-0.1)


@torch.no_grad()
def test_soft_selection_weights_sum_to_one(tiny_backbone):
    model = make_pool(tiny_backbone, selection="soft", temperature=0.5)
    context = two_texts(model)
    model.prompt.train()  # in training the pool adds each forward's selection weights to its histogram
    output = model.prompt(context)
    # α = softmax(cos(q, K) / τ): recomputed here, and checked against the weights the pool recorded.
    similarity = (torch.nn.functional.normalize(model.prompt.queries(context), dim=-1)
                  @ torch.nn.functional.normalize(model.prompt.keys, dim=-1).T)
    weights = (similarity / 0.5).softmax(-1)
    torch.testing.assert_close(model.prompt.selection_weights, weights.sum(0))
    torch.testing.assert_close(weights.sum(-1), torch.ones(2))
    selected = torch.einsum("bk,kph->bph", weights, model.prompt.pool)
    torch.testing.assert_close(output.prepend, torch.cat([model.prompt.shared.expand(2, S, -1), selected], dim=1))
    assert output.aux_loss is None  # keys learn through the weights


@pytest.mark.parametrize("placement,query,shared", [("input", "backbone", S), ("input", "encoder", S),
                                                    ("layers", "backbone", S), ("input", "backbone", 0)])
def test_parameter_counts(placement, query, shared, tiny_backbone):
    model = make_pool(tiny_backbone, placement=placement, query=query, shared_length=shared)
    H, L = model.facts.hidden_size, model.facts.num_layers
    layers = L if placement == "layers" else 1
    expected = {"prompt.pool": K * layers * P * H, "prompt.keys": K * H,
                "formats.classification.head.1.weight": 2 * H, "formats.classification.head.1.bias": 2}
    if shared:
        expected["prompt.shared"] = layers * shared * H
    if query == "encoder":
        expected |= {"prompt.query_encoder.weight": H * H, "prompt.query_encoder.bias": H}
    assert {n: p.numel() for n, p in model.named_parameters() if p.requires_grad} == expected


@pytest.mark.parametrize("arch,fmt,extra", [
    ("bert", "head", ["--model.placement=input"]),
    ("gpt2", "text_to_text", ["--model.placement=layers", "--model.query=encoder"]),
    ("t5", "text_to_text", ["--model.placement=layers", "--model.selection=soft"]),
    ("llama", "head", ["--model.selection=soft"]),
])
def test_pool_through_the_cli_logs_its_selection_histogram(arch, fmt, extra, tiny_backbone, reviews, tmp_path):
    args = ["--model=PromptPool", f"--model.backbone={tiny_backbone(arch)}", f"--model.pool_size={K}",
            f"--model.prompt_length={P}", f"--data.task_format={fmt}", "--data.batch_size=8", "--data.id_column=id", *extra]
    if fmt == "text_to_text":
        args.append("--data.template=review : {text} sentiment :")
    cli = run_cli("fit", *args, data_files_arg(reviews), "--trainer.max_epochs=2", root=tmp_path)
    rows = list(csv.DictReader(open(tmp_path / "lightning_logs" / "version_0" / "metrics.csv")))
    epochs = [r for r in rows if r.get("pool/entries_used")]
    assert len(epochs) == 2  # one histogram per epoch
    for row in epochs:
        shares = [float(row[f"pool/selected_{k}"]) for k in range(K)]
        assert sum(shares) == pytest.approx(1.0, abs=1e-5)
    output = tmp_path / "predictions.jsonl"
    files = {**reviews, "test": reviews["unlabelled"]}
    run_cli("predict", *args, data_files_arg(files), f"--ckpt_path={cli.trainer.checkpoint_callback.best_model_path}",
            f"--predictions.output={output}", root=tmp_path)
    assert len(output.read_text().splitlines()) == 8
    exported = lit_prompts.load(tmp_path / "lightning_logs" / "version_0" / "prompt")
    assert torch.equal(exported.prompt.keys, lit_prompts.load(cli.trainer.checkpoint_callback.best_model_path).prompt.keys)


def test_pool_under_ddp_two_processes(tiny_backbone, reviews, tmp_path):
    """Unselected entries still get (zero) gradients and keys always take part, so DDP's default
    strategy never meets an unused parameter; the histogram sums both processes' selections."""
    args = ["--model=PromptPool", f"--model.backbone={tiny_backbone('gpt2')}", f"--model.pool_size={K}",
            f"--model.prompt_length={P}", "--model.placement=layers", "--data.batch_size=8",
            data_files_arg(reviews, ("train", "validation")), "--trainer.max_epochs=1",
            "--trainer.strategy=ddp_spawn", "--trainer.devices=2", "--model.center_query=true"]
    cli = run_cli("fit", *args, root=tmp_path)
    assert cli.trainer.world_size == 2
    rows = list(csv.DictReader(open(tmp_path / "lightning_logs" / "version_0" / "metrics.csv")))
    shares = [float(r[f"pool/selected_{k}"]) for r in rows if r.get("pool/entries_used") for k in range(K)]
    assert sum(shares) == pytest.approx(1.0, abs=1e-5)
    # The picks behind the frequency penalty count both processes' rows (32 rows, 2 picks each), so every
    # process selects by the same counts, and rank 0's checkpoint holds them all.
    last = torch.load(tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["lit_prompts"]["pool"]["picks"].sum() == 32 * 2
    # Likewise the mean the queries are centred on averages both processes' 32 rows.
    assert last["lit_prompts"]["pool"]["queries_seen"] == 32 and "prompt.query_mean" in last["state_dict"]


@pytest.mark.parametrize("center_query", ["false", "true"])
def test_a_resumed_pool_run_selects_as_the_uninterrupted_run(center_query, tiny_backbone, reviews, tmp_path):
    """The picks behind the frequency penalty, the epoch's histogram and (``center_query``) the mean the
    queries are centred on come back from a checkpoint of a run stopped in mid-epoch: the resumed run ends
    bitwise equal to the run never stopped."""
    args = ["--model=PromptPool", f"--model.center_query={center_query}", f"--model.backbone={tiny_backbone('bert')}",
            f"--model.pool_size={K}", f"--model.prompt_length={P}", "--model.top_k=2", "--data.batch_size=8",
            data_files_arg(reviews),
            "--seed_everything=7", "--model.lr_schedule=constant_with_warmup", "--model.warmup_steps=2",
            "--trainer.max_epochs=2"]  # 32 rows: 4 steps an epoch
    run_cli("fit", *args, root=tmp_path / "whole")
    run_cli("fit", *args, "--trainer.max_steps=6", root=tmp_path / "resumed")  # stops in the second epoch
    folders = {run: tmp_path / run / "lightning_logs" / "version_0" for run in ("whole", "resumed")}
    last = folders["resumed"] / "checkpoints" / "last.ckpt"
    picks_then = torch.load(last, weights_only=True)["lit_prompts"]["pool"]["picks"]
    assert picks_then.sum() == 6 * 8 * 2 and (picks_then > 0).sum() > 2  # the penalty spread them
    run_cli("fit", *args, f"--ckpt_path={last}", root=tmp_path / "resumed")
    whole, resumed = (torch.load(f / "checkpoints" / "last.ckpt", weights_only=True) for f in folders.values())
    assert whole["global_step"] == resumed["global_step"] == 8
    assert whole["state_dict"].keys() == resumed["state_dict"].keys()
    for name, tensor in whole["state_dict"].items():
        assert torch.equal(resumed["state_dict"][name], tensor), name
    for name, state in whole["lit_prompts"]["pool"].items():
        assert torch.equal(resumed["lit_prompts"]["pool"][name], state), name
    assert ("prompt.query_mean" in whole["state_dict"]) == (center_query == "true")

    def last_histogram(folder):  # the second epoch's, logged last
        rows = [r for r in csv.DictReader(open(folder / "metrics.csv")) if r.get("pool/entries_used")]
        return [float(rows[-1][f"pool/selected_{k}"]) for k in range(K)]

    assert last_histogram(folders["resumed"]) == last_histogram(folders["whole"])


@pytest.mark.parametrize("task,fmt,arch,placement", [("ner", "token", "bert", "input"), ("qa", "span", "gpt2", "layers")])
def test_pool_on_token_and_span_tasks(task, fmt, arch, placement, tiny_backbone, ner_files, squad_files, tmp_path):
    files = {"train": ner_files["train"], "validation": ner_files["validation"]} if task == "ner" else squad_files
    args = ["--model=PromptPool", f"--model.backbone={tiny_backbone(arch)}", f"--model.pool_size={K}",
            f"--model.prompt_length={P}", f"--model.placement={placement}", f"--data.task={task}",
            f"--data.task_format={fmt}", "--data.batch_size=8", "--data.max_length=48", "--data.stride=16",
            f"--data.data_files={json.dumps(files)}", "--trainer.max_epochs=1"]
    cli = run_cli("fit", *args, root=tmp_path)
    assert {"val/f1"} <= set(cli.trainer.callback_metrics)


@torch.no_grad()
@pytest.mark.parametrize("query", ["backbone", "encoder"])
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_decoder_selects_by_the_source_alone_in_training_generation_and_ranking(arch, query, tiny_backbone):
    """A decoder trains on rows of source + target; it generates, and ranks label candidates, from the source.
    The query reads the source alone in all three, so a training row selects the prompts its generation
    will use, and every candidate of a row gets the same prompts (not the answer's)."""
    model = make_pool(tiny_backbone, arch, query=query, top_k=1)
    collate = Collator(pad_id=0, padding_side="left", task_format="text_to_text", is_encoder_decoder=False,
                       class_targets=[[500, 501, 502], [600]], with_candidates=True)
    batch = collate([{"id": 0, "input_ids": [400, 401, 402], "label": 0},
                     {"id": 1, "input_ids": [300, 301, 302, 303, 304], "label": 1}])
    training = {k: batch[k] for k in ("input_ids", "attention_mask", "target_ids")}
    source = model.prompt.queries(model.backbone.context(batch["source"]))
    torch.testing.assert_close(model.prompt.queries(model.backbone.context(training)), source)
    torch.testing.assert_close(model.prompt.queries(model.backbone.context(batch["candidates"])),
                               source.repeat_interleave(2, dim=0))
    # With the query of source + target the selection would differ: the target moves the mean.
    whole = model.prompt.queries(model.backbone.context({k: training[k] for k in ("input_ids", "attention_mask")}))
    assert not torch.allclose(whole, source)
