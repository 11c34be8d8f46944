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
