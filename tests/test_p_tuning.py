"""P-tuning: prompt vectors land exactly at the template's [P:n] positions, between real anchor
words; the encoder folds into plain vectors at export; mismatched templates are refused."""

from __future__ import annotations

import pytest
import torch
from conftest import data_files_arg, run_cli

import lit_prompts
from lit_prompts import PromptDataModule, PTuning
from lit_prompts.methods import SoftPrompt

TEMPLATE = "[P:2] {text} [P:1] it was {mask} ."


@pytest.mark.parametrize("arch,fmt,template", [
    ("bert", "cloze", TEMPLATE),
    ("roberta", "cloze", TEMPLATE),
    ("gpt2", "text_to_text", "[P:2] review : {text} [P:1] sentiment :"),
    ("llama", "text_to_text", "[P:2] review : {text} [P:1] sentiment :"),
    ("t5", "text_to_text", "[P:2] review : {text} [P:1] sentiment :"),
])
@torch.no_grad()
def test_prompt_vectors_sit_at_the_marked_positions(arch, fmt, template, tiny_backbone, reviews):
    backbone = tiny_backbone(arch)
    dm = PromptDataModule(backbone=backbone, task_format=fmt, template=template, batch_size=4,
                          verbalizer={"positive": "great", "negative": "bad"},
                          data_files={"train": reviews["train"], "validation": reviews["validation"]})
    dm.setup("fit")
    assert dm.template_virtual_tokens == 3
    feature = dm.datasets["validation"].features[0]
    index = feature["virtual_index"]
    positions = [i for i, k in enumerate(index) if k >= 0]
    assert [index[i] for i in positions] == [0, 1, 2]
    # Two adjacent vectors before the text; one after it, right before the anchor words.
    assert positions[0] + 1 == positions[1] and positions[1] + 1 < positions[2]
    after = feature["input_ids"][positions[2] + 1 :]
    assert dm.tokenizer.decode(after).strip().startswith("it was" if fmt == "cloze" else "sentiment")
    assert dm.tokenizer.convert_ids_to_tokens(after[0]) != "Ġ"  # no lone space token (byte-level BPE)

    torch.manual_seed(0)
    model = PTuning(backbone=backbone, task_format=fmt, label_names=dm.label_names, num_virtual_tokens=3,
                    verbalizer_token_ids=dm.verbalizer_token_ids).eval()
    batch = next(iter(dm.val_dataloader()))
    seqs = batch if fmt == "cloze" else batch["candidates"]
    seqs = {k: seqs[k] for k in ("input_ids", "attention_mask", "virtual_index")}
    inputs, shift = model.backbone.prompted_inputs(seqs, *model.prompted(model.default_task).prompt_for(seqs))
    # By hand: the token embeddings with the encoder's vector k written where virtual_index == k.
    expected = model.backbone.model.get_input_embeddings()(seqs["input_ids"]).clone()
    vectors = model.prompt.vectors()
    for row, col in (seqs["virtual_index"] >= 0).nonzero().tolist():
        expected[row, col] = vectors[seqs["virtual_index"][row, col]]
    assert shift == 0 and inputs["inputs_embeds"].shape == expected.shape  # nothing prepended
    torch.testing.assert_close(inputs["inputs_embeds"], expected)


def test_template_and_method_must_agree(tiny_backbone, reviews, tmp_path):
    common = [f"--model.backbone={tiny_backbone('bert')}", "--data.task_format=cloze", f"--data.template={TEMPLATE}",
              "--data.verbalizer={positive: great, negative: bad}", data_files_arg(reviews, ("train", "validation")),
              "--trainer.max_epochs=1"]
    with pytest.raises(ValueError, match=r"template has 3 virtual tokens \(\[P:n\]\); PTuning fills 4"):
        run_cli("fit", "--debug", "--model=PTuning", "--model.num_virtual_tokens=4", *common, root=tmp_path)
    with pytest.raises(ValueError, match=r"template has 3 virtual tokens \(\[P:n\]\); PromptTuning fills 0"):
        run_cli("fit", "--debug", "--model=PromptTuning", *common, root=tmp_path)


@pytest.mark.parametrize("encoder,residual", [("lstm", True), ("mlp", False)])
def test_encoder_folds_into_the_exported_vectors(encoder, residual, tiny_backbone, reviews, tmp_path):
    cli = run_cli("fit", "--model=PTuning", f"--model.encoder={encoder}", f"--model.residual={residual}",
                  "--model.num_virtual_tokens=3",
                  f"--model.backbone={tiny_backbone('bert')}", "--data.task_format=cloze", f"--data.template={TEMPLATE}",
                  "--data.verbalizer={positive: great, negative: bad}", data_files_arg(reviews, ("train", "validation")),
                  "--trainer.max_epochs=1", root=tmp_path)
    groups = cli.trainer.optimizers[0].param_groups
    assert {id(p) for group in groups for p in group["params"]} == {id(p) for p in cli.model.trainable_parameters()}
    if residual:  # the encoder trains in its own group at its share of the rate (the schedule's base rates)
        embedding_group, encoder_group = groups
        encoder_ids = {id(p) for p in cli.model.prompt.residual_encoder.parameters()}
        assert {id(p) for p in encoder_group["params"]} == encoder_ids
        scale = PTuning.ENCODER_LR_SCALE
        assert encoder_group["initial_lr"] == pytest.approx(scale * embedding_group["initial_lr"], rel=1e-12)
    else:  # the paper's form: one group at one rate
        assert len(groups) == 1
    trained = lit_prompts.load(cli.trainer.checkpoint_callback.best_model_path).eval()
    exported = lit_prompts.load(tmp_path / "lightning_logs" / "version_0" / "prompt").eval()
    # The export holds the encoder's output as plain vectors: a SoftPrompt that fills the template, no encoder.
    assert (trained.prompt.residual_encoder if residual else trained.prompt.encoder) is not None
    assert isinstance(exported.prompt, SoftPrompt) and exported.prompt.template_length == 3
    assert getattr(exported.prompt, "encoder", None) is None
    batch = next(iter(cli.datamodule.val_dataloader()))
    task = trained.default_task
    with torch.no_grad():
        torch.testing.assert_close(exported.formats[task].scores(exported.prompted(task), batch),
                                   trained.formats[task].scores(trained.prompted(task), batch))


def test_the_default_encoder_is_the_mlp_with_the_residual_and_the_lstm_in_the_papers_form(tiny_backbone):
    common = {"backbone": tiny_backbone("bert"), "label_names": ["negative", "positive"], "num_virtual_tokens": 4}
    residual, paper = PTuning(**common), PTuning(**common, residual=False)
    assert residual.hparams.encoder == "mlp" and residual.prompt.residual_encoder.lstm is None
    assert paper.hparams.encoder == "lstm" and paper.prompt.encoder.lstm is not None  # (saved settings hold the choice)
    assert PTuning(**common, encoder="lstm").prompt.residual_encoder.lstm is not None


def test_the_residual_encoder_starts_at_the_initial_embedding_and_learns_a_change(tiny_backbone):
    torch.manual_seed(0)
    model = PTuning(backbone=tiny_backbone("bert"), label_names=["negative", "positive"], num_virtual_tokens=4)
    prompt = model.prompt
    start = prompt.prompt_embedding.detach().clone()
    # Vocabulary tokens' embeddings, as prompt tuning starts, and exactly them at step 0.
    table = model.backbone.model.get_input_embeddings().weight
    assert all((table == row).all(-1).any() for row in start)
    assert torch.equal(prompt.vectors(), start)
    optimizer = torch.optim.AdamW(prompt.parameters(), lr=1e-2)
    for _ in range(2):
        optimizer.zero_grad()
        (prompt.vectors() * torch.randn(4, start.shape[1])).sum().backward()
        optimizer.step()
    change = prompt.vectors() - prompt.prompt_embedding
    assert change.abs().max() > 0  # the encoder now adds its own part
    plain = PTuning(backbone=tiny_backbone("bert"), label_names=["negative", "positive"], num_virtual_tokens=4,
                    residual=False).prompt
    assert not torch.allclose(plain.vectors(), plain.prompt_embedding)  # the paper's form replaces the start


def test_a_checkpoint_of_the_encoder_alone_needs_residual_false(tiny_backbone):
    def make(**kwargs):
        return PTuning(backbone=tiny_backbone("bert"), label_names=["negative", "positive"], num_virtual_tokens=4, **kwargs)

    old = make(residual=False)
    checkpoint = {"state_dict": old.state_dict()}
    old.on_save_checkpoint(checkpoint)
    with pytest.raises(ValueError, match=r"encoder's output alone.*--model.residual=false"):
        make().on_load_checkpoint(checkpoint)
    make(residual=False).on_load_checkpoint(checkpoint)


def test_a_checkpoint_with_one_optimizer_group_resumes_with_encoder_lr_scale_1(tiny_backbone):
    def make(**kwargs):
        return PTuning(backbone=tiny_backbone("bert"), label_names=["negative", "positive"], num_virtual_tokens=4, **kwargs)

    old = make(encoder_lr_scale=1.0)  # the encoder at the prompt's rate: one group, as saved before the scale existed
    assert len(old.parameter_groups()) == 1 and len(make().parameter_groups()) == 2
    checkpoint = {"state_dict": old.state_dict(), "optimizer_states": [{"param_groups": [{"lr": 0.03}], "state": {}}]}
    old.on_save_checkpoint(checkpoint)
    with pytest.raises(ValueError, match=r"--model.encoder_lr_scale=1"):
        make().on_load_checkpoint(checkpoint)
    make(encoder_lr_scale=1.0).on_load_checkpoint(checkpoint)

    # The other way round (two groups saved, one asked for), torch would refuse without naming a group.
    checkpoint = {"state_dict": old.state_dict(), "optimizer_states": [{"param_groups": [{"lr": 0.03}] * 2, "state": {}}]}
    old.on_save_checkpoint(checkpoint)
    with pytest.raises(ValueError, match=r"optimizer trained 2 parameter group\(s\) where PTuning with these settings trains 1"):
        make(encoder_lr_scale=1.0).on_load_checkpoint(checkpoint)
    make().on_load_checkpoint(checkpoint)


def test_a_resumed_run_trains_the_encoder_at_its_rate_as_the_uninterrupted_run(tiny_backbone, reviews, tmp_path):
    args = ["--model=PTuning", f"--model.backbone={tiny_backbone('bert')}", "--model.num_virtual_tokens=3",
            "--seed_everything=7", data_files_arg(reviews), "--data.batch_size=8", "--trainer.max_epochs=-1",
            # a schedule independent of the run's length, so that the shorter first part trains as the whole run
            "--model.lr_schedule=constant_with_warmup", "--model.warmup_steps=2"]
    whole = run_cli("fit", *args, "--trainer.max_steps=7", root=tmp_path / "whole")
    run_cli("fit", *args, "--trainer.max_steps=5", root=tmp_path / "part")
    last = tmp_path / "part" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    resumed = run_cli("fit", *args, "--trainer.max_steps=7", f"--ckpt_path={last}", root=tmp_path / "part")
    assert resumed.trainer.global_step == whole.trainer.global_step == 7
    ours, theirs = resumed.model.trainable_state_dict(), whole.model.trainable_state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs)
    groups = [resumed.trainer.optimizers[0].param_groups, whole.trainer.optimizers[0].param_groups]
    assert [[g["lr"] for g in run] for run in groups][0] == [[g["lr"] for g in run] for run in groups][1]
    assert groups[0][1]["lr"] == pytest.approx(PTuning.ENCODER_LR_SCALE * groups[0][0]["lr"], rel=1e-12)


def test_a_scale_given_on_the_command_line_leaves_a_checkpoint_the_safe_reader_takes(tiny_backbone, reviews, tmp_path):
    # jsonargparse hands the value over as its PositiveFloat type: kept in the optimizer's state, it would make
    # the checkpoint an unpickling risk that lit_prompts.load refuses.
    cli = run_cli("fit", "--model=PTuning", "--model.encoder_lr_scale=0.5", "--model.num_virtual_tokens=3",
                  f"--model.backbone={tiny_backbone('bert')}", data_files_arg(reviews, ("train", "validation")),
                  "--data.batch_size=8", "--trainer.max_steps=2", root=tmp_path)
    last = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    groups = torch.load(last, map_location="cpu", weights_only=True)["optimizer_states"][0]["param_groups"]
    assert [type(g["lr"]) for g in groups] == [float, float] and all("lr_scale" not in g for g in groups)
    assert groups[1]["initial_lr"] == pytest.approx(0.5 * groups[0]["initial_lr"], rel=1e-12)
    loaded = lit_prompts.load(last)
    assert torch.equal(loaded.prompt.vectors(), cli.model.prompt.vectors())
