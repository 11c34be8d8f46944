"""Multi-task prompt tuning (MPT and task selectors) over classification, NER and QA at once, mixed-task
predict, prompt-library serving of single-task prompts, and DDP with per-task tensors."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import data_files_arg, ner_sentences, review_rows, run_cli, squad_articles, write_jsonl

import lit_prompts
from lit_prompts import MultiTaskPromptTuning, PromptTuning, PTuningV2
from lit_prompts.data.multitask import epoch_plan


@pytest.fixture
def three_tasks(reviews, ner_files, squad_files) -> dict:
    return {
        "sentiment": {"task": "classification", "task_format": "head",
                      "data_files": {"train": reviews["train"], "validation": reviews["validation"]}},
        "entities": {"task": "ner", "task_format": "token",
                     "data_files": {"train": ner_files["train"], "validation": ner_files["validation"]}},
        "questions": {"task": "qa", "task_format": "span", "max_length": 64, "stride": 16,
                      "data_files": {"train": squad_files["train"], "validation": squad_files["validation"]}},
    }


def mixed_rows() -> list[dict]:
    """Unlabelled rows of the three tasks, interleaved."""
    sentiment = [{"task": "sentiment", **r} for r in review_rows(5, seed=31, labelled=False)]
    entities = [{"task": "entities", "id": f"n{i}", "tokens": t} for i, (t, _) in enumerate(ner_sentences(5, seed=32))]
    questions = [{"task": "questions", "id": q["id"], "question": q["question"], "context": p["context"]}
                 for p in squad_articles(1, seed=33)["data"][0]["paragraphs"] for q in p["qas"]]
    rows = []
    for i in range(max(len(sentiment), len(entities), len(questions))):
        rows += [group[i] for group in (sentiment, entities, questions) if i < len(group)]
    return rows


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in open(path)]


def assert_same_predictions(mixed: list[dict], alone: list[dict]) -> None:
    """Labels, entities and answers equal; scores equal up to float noise (other padding)."""
    assert [r["id"] for r in mixed] == [r["id"] for r in alone]
    for a, b in zip(mixed, alone):
        assert {k: v for k, v in a.items() if k != "score"} == {k: v for k, v in b.items() if k != "score"}
        if a.get("score") is not None:
            assert a["score"] == pytest.approx(b["score"], abs=1e-4)


def multitask_args(backbone: str, tasks: dict, variant: str, placement: str) -> list[str]:
    return ["--model=MultiTaskPromptTuning", f"--model.backbone={backbone}", f"--model.variant={variant}",
            f"--model.placement={placement}", "--model.num_virtual_tokens=4", "--model.pool_size=3",
            "--model.selector_hidden_size=8", "--data=MultiTaskDataModule", "--data.tasks=" + json.dumps(tasks),
            "--data.batch_size=8", "--data.sampling=round_robin"]


@pytest.mark.parametrize("variant,placement", [("mpt", "input"), ("selector", "layers")])
def test_three_tasks_train_together_and_mixed_predict_equals_per_task(variant, placement, tiny_backbone, three_tasks, tmp_path):
    args = multitask_args(tiny_backbone("bert"), three_tasks, variant, placement)
    cli = run_cli("fit", *args, "--trainer.max_epochs=2", root=tmp_path / "fit")
    logged = cli.trainer.callback_metrics
    for key in ("val/sentiment/accuracy", "val/entities/f1", "val/questions/exact_match", "val/questions/f1",
                "train/sentiment/loss", "train/entities/loss", "train/questions/loss"):
        assert key in logged, key
    # The monitored macro average puts every task's own metric on a 0-1 scale.
    expected = (logged["val/sentiment/accuracy"] + logged["val/entities/f1"] + logged["val/questions/f1"] / 100) / 3
    assert float(logged["val/macro"]) == pytest.approx(float(expected), abs=1e-6)
    assert cli.trainer.checkpoint_callback.monitor == "val/macro"
    best = cli.trainer.checkpoint_callback.best_model_path

    rows = mixed_rows()
    mixed_file = write_jsonl(tmp_path / "mixed.jsonl", rows)
    run_cli("predict", *args, f"--ckpt_path={best}", f"--data.predict_files={mixed_file}", "--data.eval_batch_size=4",
            f"--predictions.output={tmp_path / 'mixed.out.jsonl'}", root=tmp_path / "predict")
    mixed = read_jsonl(tmp_path / "mixed.out.jsonl")
    assert [(r["task"], r["id"]) for r in mixed] == [(r["task"], r.get("id", i)) for i, r in enumerate(rows)]
    assert {r["task"] for r in mixed[:4]} == {"sentiment", "entities", "questions"}  # batches really mix tasks
    for task in three_tasks:
        alone_file = write_jsonl(tmp_path / f"{task}.jsonl", [r for r in rows if r["task"] == task])
        out = tmp_path / f"{task}.out.jsonl"
        run_cli("predict", *args, f"--ckpt_path={best}", f"--data.predict_files={alone_file}", "--data.eval_batch_size=3",
                f"--predictions.output={out}", root=tmp_path / "predict")
        assert_same_predictions([r for r in mixed if r["task"] == task], read_jsonl(out))
    exported = lit_prompts.load(tmp_path / "fit" / "lightning_logs" / "version_0" / "prompt")
    assert isinstance(exported, MultiTaskPromptTuning) and list(exported.formats) == list(three_tasks)


def task_specs(with_qa: bool = True) -> dict:
    specs = {"sentiment": {"task": "classification", "task_format": "head", "label_names": ["neg", "pos"]},
             "entities": {"task": "ner", "task_format": "token", "label_names": ["O", "B-PER", "I-PER"]}}
    if with_qa:
        specs["questions"] = {"task": "qa", "task_format": "span", "label_names": ["start", "end"]}
    return specs


@pytest.mark.parametrize("variant,placement", [("mpt", "input"), ("mpt", "layers"), ("selector", "input"), ("selector", "layers")])
def test_parameter_counts_equal_the_formulas(variant, placement, tiny_backbone):
    model = MultiTaskPromptTuning(backbone=tiny_backbone("bert"), task_specs=task_specs(), variant=variant,
                                  placement=placement, num_virtual_tokens=5, rank=2, pool_size=4, selector_hidden_size=6)
    h, p, r, k, d, tasks = model.facts.hidden_size, 5, 2, 4, 6, 3
    layers = model.facts.num_layers if placement == "layers" else 1
    heads = (h * 2 + 2) + (h * 3 + 3) + (h * 2 + 2)
    prompt = layers * p * h + tasks * r * (p + h) if variant == "mpt" else k * layers * p * h + d * h + d + tasks * (k * d + k)
    assert sum(t.numel() for t in model.trainable_parameters()) == prompt + heads
    assert all(not t.requires_grad for t in model.backbone.parameters())


def test_a_step_of_one_task_leaves_the_other_tasks_tensors_without_gradient(tiny_backbone, three_tasks):
    dm = lit_prompts.MultiTaskDataModule(backbone=tiny_backbone("bert"), tasks=three_tasks, batch_size=4)
    dm.setup("fit")
    model = MultiTaskPromptTuning(backbone=tiny_backbone("bert"), task_specs=dm.task_specs, rank=2,
                                  loss_weights={"entities": 2.5}).eval()  # eval: no head dropout, so both losses agree
    batch = next(b for b in dm.train_dataloader() if b["task"] == "entities")
    loss = model.training_step(batch, 0)
    plain = model.training_loss(batch)  # the batch names its task: the unweighted loss
    assert float(loss.detach()) == pytest.approx(2.5 * float(plain.detach()))  # α_t from loss_weights
    loss.backward()
    grads = {n: t.grad for n, t in model.named_parameters() if t.requires_grad}
    assert all(grads[n] is not None for n in ("prompt.shared_prompt", "prompt.task_u.entities", "prompt.task_v.entities"))
    assert all(g is None for n, g in grads.items() if "sentiment" in n or "questions" in n)
    # At initialisation u_t v_tᵀ is close to all-ones: each task starts from the shared prompt.
    context = model.backbone.context({k: batch[k] for k in ("input_ids", "attention_mask")}, "sentiment")
    prompt = model.prompt(context).prepend[0]
    assert torch.allclose(prompt, model.prompt.shared_prompt, rtol=0.1)


def test_selector_weights_are_per_example_and_sum_to_one(tiny_backbone):
    model = MultiTaskPromptTuning(backbone=tiny_backbone("bert"), task_specs=task_specs(False), variant="selector",
                                  pool_size=5)
    inputs = {"input_ids": torch.randint(5, 90, (3, 7)), "attention_mask": torch.ones(3, 7)}
    context = model.backbone.context(inputs, "entities")
    weights = model.prompt.selection(context)
    prompt = model.prompt(context).prepend
    assert weights.shape == (3, 5)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3))
    assert not torch.allclose(weights[0], weights[1])
    torch.testing.assert_close(prompt, torch.einsum("bk,kph->bph", weights, model.prompt.pool))
    # another task reads the same pool through its own selector
    assert not torch.allclose(model.prompt.selection(model.backbone.context(inputs, "sentiment")), weights)
    # cast whole to bf16, the selector reads the fp32 mean embedding in its own dtype
    half = model.prompt.to(torch.bfloat16)(context).prepend
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), prompt, rtol=0, atol=5e-2)


@pytest.mark.parametrize("placement", ["input", "layers"])
def test_mpt_starts_from_a_trained_single_task_prompt(placement, tiny_backbone, tmp_path):
    backbone = tiny_backbone("bert")
    if placement == "input":
        single = PromptTuning(backbone=backbone, label_names=["neg", "pos"], num_virtual_tokens=6)
        tensor = single.prompt.prompt
    else:
        single = PTuningV2(backbone=backbone, label_names=["neg", "pos"], num_virtual_tokens=6)
        tensor = single.prompt.deep_prompts
    single.export_prompt(tmp_path / "single")
    model = MultiTaskPromptTuning(backbone=backbone, task_specs=task_specs(False), num_virtual_tokens=6,
                                  placement=placement, init_prompt=str(tmp_path / "single"))
    assert torch.equal(model.prompt.shared_prompt.detach(), tensor.detach())
    with pytest.raises(ValueError, match=r"single/prompt.safetensors: prompt of shape .*this run needs \(.*4"):
        MultiTaskPromptTuning(backbone=backbone, task_specs=task_specs(False), num_virtual_tokens=4,
                              placement=placement, init_prompt=str(tmp_path / "single"))


def test_multitask_ddp_two_processes(tiny_backbone, three_tasks, tmp_path):
    args = multitask_args(tiny_backbone("bert"), three_tasks, "mpt", "input")
    cli = run_cli("fit", *args, "--trainer.max_epochs=1", "--trainer.strategy=ddp_spawn", "--trainer.devices=2",
                  root=tmp_path)
    # `ddp_spawn` became the variant that tolerates tensors a step leaves unused.
    assert cli.config["fit"]["trainer"]["strategy"] == "ddp_spawn_find_unused_parameters_true"
    assert "val/macro" in cli.trainer.callback_metrics
    # Each rank took half of the epoch's plan: the plan sampler was not wrapped in another
    # distributed sampler (which would have halved it again).
    dm = cli.datamodule
    dm.setup("fit")  # (the spawned processes set up their own copies)
    sizes = {name: len(m.datasets["train"]) for name, m in dm.modules.items()}
    steps = len(epoch_plan(sizes, 8, "round_robin", 2.0, seed=0, rank=0, world_size=2))
    last = torch.load(tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == steps == math.floor(sum(math.ceil(n / 8) for n in sizes.values()) / 2)


def test_multitask_refuses_ddp_that_ignores_unused_parameters(tiny_backbone, three_tasks, tmp_path):
    args = multitask_args(tiny_backbone("bert"), three_tasks, "mpt", "input")
    # Raised in the spawned ranks; their traceback (with the message) comes back to this process.
    with pytest.raises(Exception, match="MultiTaskPromptTuning trains per-task tensors that a batch of another task"):
        run_cli("fit", *args, "--trainer.max_epochs=1", "--trainer.strategy=ddp_spawn_find_unused_parameters_false",
                "--trainer.devices=2", root=tmp_path)


def test_prompt_library_serves_single_task_prompts_on_one_backbone(tiny_backbone, reviews, ner_files, tmp_path):
    backbone = tiny_backbone("bert")
    trained = {}
    for task, method, data in (
        ("sentiment", "PromptTuning", ["--data.task=classification", data_files_arg(reviews, ("train", "validation"))]),
        ("entities", "PTuningV2", ["--data.task=ner", "--data.task_format=token", data_files_arg(ner_files, ("train", "validation"))]),
    ):
        run_cli("fit", f"--model={method}", f"--model.backbone={backbone}", "--model.num_virtual_tokens=3", *data,
                "--data.batch_size=8", "--trainer.max_epochs=1", root=tmp_path / task)
        trained[task] = tmp_path / task / "lightning_logs" / "version_0"
    rows = [r for r in mixed_rows() if r["task"] != "questions"]
    mixed_file = write_jsonl(tmp_path / "mixed.jsonl", rows)
    tasks = {"sentiment": {"task": "classification", "data_files": {"train": reviews["train"]}},
             "entities": {"task": "ner", "task_format": "token", "data_files": {"train": ner_files["train"]}}}
    prompts = {task: str(folder / "prompt") for task, folder in trained.items()}
    cli = run_cli("predict", "--model=PromptLibrary", f"--model.backbone={backbone}", "--model.prompts=" + json.dumps(prompts),
                  "--data=MultiTaskDataModule", "--data.tasks=" + json.dumps(tasks), f"--data.predict_files={mixed_file}",
                  "--data.eval_batch_size=4", f"--predictions.output={tmp_path / 'mixed.out.jsonl'}", root=tmp_path / "serve")
    assert cli.model.methods["sentiment"].backbone.model is cli.model.methods["entities"].backbone.model
    mixed = read_jsonl(tmp_path / "mixed.out.jsonl")
    # A mixed batch (an input prompt and deep prompts) takes one backbone call.
    calls = []
    hook = cli.model.methods["sentiment"].backbone.model.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        first = cli.model.predict_step(next(iter(cli.datamodule.predict_dataloader())), 0)
    hook.remove()
    assert len({r["task"] for r in first}) == 2 and len(calls) == 1
    assert [r["id"] for r in first] == [r["id"] for r in mixed[:len(first)]]
    assert [r["task"] for r in mixed] == [r["task"] for r in rows]
    files = {"sentiment": reviews, "entities": ner_files}
    for task, folder in trained.items():
        alone_file = write_jsonl(tmp_path / f"{task}.jsonl", [{k: v for k, v in r.items() if k != "task"}
                                                             for r in rows if r["task"] == task])
        out = tmp_path / f"{task}.out.jsonl"
        best = next((folder / "checkpoints").glob("best-*.ckpt"))
        run_cli("predict", f"--config={folder / 'config.yaml'}", f"--ckpt_path={best}",
                "--data.data_files=" + json.dumps({"train": files[task]["train"], "predict": str(alone_file)}),
                "--data.splits={predict: predict}", "--data.id_column=id", "--data.eval_batch_size=3",
                f"--predictions.output={out}", root=tmp_path / "alone")
        of_task = [{k: v for k, v in r.items() if k != "task"} for r in mixed if r["task"] == task]
        assert_same_predictions(of_task, read_jsonl(out))


def test_multitask_errors_name_what_is_wrong(tiny_backbone, three_tasks, tmp_path):
    backbone = tiny_backbone("bert")
    text_and_head = {**task_specs(False), "generated": {"task": "classification", "task_format": "text_to_text",
                                                        "label_names": ["a", "b"]}}
    with pytest.raises(ValueError, match="need different forms of the backbone"):
        MultiTaskPromptTuning(backbone=backbone, task_specs=text_and_head)
    with pytest.raises(ValueError, match=r"loss_weights names tasks \['sentimnet'\]"):
        MultiTaskPromptTuning(backbone=backbone, task_specs=task_specs(), loss_weights={"sentimnet": 2.0})
    model = MultiTaskPromptTuning(backbone=backbone, task_specs=task_specs())
    with pytest.raises(KeyError, match="task 'poems' is not one of the trained tasks"):
        model.training_loss({"task": "poems"})
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"task": "sentiment", "text": "fine"}, {"task": "poems", "text": "roses"}])
    dm = lit_prompts.MultiTaskDataModule(backbone=backbone, tasks=three_tasks, predict_files=str(bad))
    with pytest.raises(ValueError, match=r"bad.jsonl: rows \[1\] name tasks \['poems'\]"):
        dm.setup("predict")
