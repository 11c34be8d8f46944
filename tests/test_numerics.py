"""Numerical checks: padded, batched, prompted computations equal hand-built unpadded references."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from lit_prompts import PromptDataModule, PromptTuning
from lit_prompts.data.collate import EpochShuffleSampler

P = 3


def build(tiny_backbone, reviews, arch: str, fmt: str, **data_kwargs):
    backbone = tiny_backbone(arch)
    dm = PromptDataModule(
        backbone=backbone, task_format=fmt, data_files={"train": reviews["train"], "validation": reviews["validation"]},
        batch_size=8, **data_kwargs,
    )
    dm.setup("fit")
    torch.manual_seed(0)
    model = PromptTuning(
        backbone=backbone, task_format=fmt, label_names=dm.label_names, verbalizer_token_ids=dm.verbalizer_token_ids,
        num_virtual_tokens=P, init="random",
    ).eval()
    return dm, model


def prompted_embeds(model, ids: list[int]) -> torch.Tensor:
    embeds = model.backbone.model.get_input_embeddings()(torch.tensor([ids]))
    return torch.cat([model.prompt.prompt.unsqueeze(0), embeds], dim=1)


def scores(model, batch) -> torch.Tensor:
    """[B, num_labels] scores of the method's (single) task format."""
    task = model.default_task
    return model.formats[task].scores(model.prompted(task), batch)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "t5"])
@torch.no_grad()
def test_rank_classification_equals_unpadded_reference(arch, tiny_backbone, reviews):
    dm, model = build(tiny_backbone, reviews, arch, "text_to_text", template="review : {text} sentiment :")
    batch = next(iter(dm.val_dataloader()))
    got = scores(model, batch)
    targets = dm.encoder.class_target_ids()
    lengths = {len(f["input_ids"]) for f in dm.datasets["validation"].features[:8]}
    assert len(lengths) > 1, "the batch must contain padding for this test to mean something"
    for i, feature in enumerate(dm.datasets["validation"].features[:8]):
        source = feature["input_ids"]
        for c, target in enumerate(targets):
            if model.facts.is_encoder_decoder:
                decoder_inputs = model.backbone.model.prepare_decoder_input_ids_from_labels(torch.tensor([target]))
                logits = model.backbone.model(inputs_embeds=prompted_embeds(model, source), decoder_input_ids=decoder_inputs).logits[0]
                positions = range(len(target))
            else:
                logits = model.backbone.model(inputs_embeds=prompted_embeds(model, source + target)).logits[0]
                start = P + len(source) - 1  # the logit at position t predicts token t + 1
                positions = range(start, start + len(target))
            logp = torch.log_softmax(logits, -1)
            expected = sum(logp[p, t] for p, t in zip(positions, target))
            torch.testing.assert_close(got[i, c], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["bert", "roberta", "gpt2", "llama", "t5"])
@torch.no_grad()
def test_head_logits_do_not_depend_on_padding(arch, tiny_backbone, reviews):
    dm, model = build(tiny_backbone, reviews, arch, "head")
    loader = dm.val_dataloader()
    batch = next(iter(loader))
    assert batch["attention_mask"].min() == 0, "the batch must contain padding"
    batched = scores(model, batch)
    for i, feature in enumerate(dm.datasets["validation"].features[:8]):
        single = scores(model, loader.collate_fn([feature]))
        torch.testing.assert_close(batched[i], single[0], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_cloze_scores_are_the_mask_logits_of_the_verbalizer(tiny_backbone, reviews):
    dm, model = build(
        tiny_backbone, reviews, "bert", "cloze", verbalizer={"positive": "great", "negative": "bad"},
        template="{text} it was {mask} .",
    )
    batch = next(iter(dm.val_dataloader()))
    got = scores(model, batch)
    words = dm.tokenizer.convert_tokens_to_ids(["bad", "great"])  # label order: negative, positive
    for i, feature in enumerate(dm.datasets["validation"].features[:8]):
        logits = model.backbone.model(inputs_embeds=prompted_embeds(model, feature["input_ids"])).logits[0]
        torch.testing.assert_close(got[i], logits[P + feature["mask_index"], words], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch,fmt", [("distilbert", "head"), ("mpnet", "cloze"), ("gpt2", "text_to_text"), ("t5", "text_to_text")])
def test_gradients_reach_only_prompt_side_tensors(arch, fmt, tiny_backbone, reviews):
    extra = {"verbalizer": {"positive": "great", "negative": "bad"}} if fmt == "cloze" else {}
    dm, model = build(tiny_backbone, reviews, arch, fmt, **extra)
    model.train()
    model.training_loss(next(iter(dm.train_dataloader()))).backward()
    assert model.prompt.prompt.grad is not None and model.prompt.prompt.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.backbone.model.parameters())
    assert all(p.grad is not None for p in model.trainable_parameters())


def test_prompt_initialisations(tiny_backbone):
    backbone = tiny_backbone("bert")
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    labels = ["negative", "positive"]

    def first_rows(text: str, n: int) -> list[int]:  # the text's token ids, repeated to length n
        ids = tokenizer(text, add_special_tokens=False).input_ids
        return (ids * n)[:n]

    from_text = PromptTuning(backbone=backbone, label_names=labels, num_virtual_tokens=5, init="text", init_text="good movie")
    table = from_text.backbone.model.get_input_embeddings().weight
    assert torch.equal(from_text.prompt.prompt.data, table[first_rows("good movie", 5)])
    from_labels = PromptTuning(backbone=backbone, label_names=labels, num_virtual_tokens=3, init="labels")
    assert torch.equal(from_labels.prompt.prompt.data, table[first_rows("negative positive", 3)])
    from_vocab = PromptTuning(backbone=backbone, label_names=labels, num_virtual_tokens=4, init="vocab")
    assert all(any(torch.equal(row, t) for t in table) for row in from_vocab.prompt.prompt.data)
    assert from_vocab.prompt.prompt.requires_grad and from_vocab.prompt.prompt.dtype == torch.float32


def test_shuffle_depends_only_on_seed_and_epoch():
    a, b = EpochShuffleSampler(50, seed=3), EpochShuffleSampler(50, seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b) and sorted(a) == list(range(50))
    b.set_epoch(3)
    assert list(a) != list(b)
