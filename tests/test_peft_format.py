"""PEFT's adapter format both ways, checked against PEFT itself: an export loads with
``PeftModel.from_pretrained`` and gives lit_prompts' outputs, and a PEFT-made adapter loads with
``lit_prompts.load`` (or ``init_from``) and gives PEFT's."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from peft import (
    LoraConfig,
    PeftModel,
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptTuningConfig,
    get_peft_model,
)
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM

import lit_prompts
from lit_prompts.cli import main
from lit_prompts.peft_format import NotRepresentable

LABELS = ["negative", "positive"]
DECODERS = ("gpt2", "llama")
PROMPT_ARCHS = ("bert", "roberta", "distilbert", "mpnet", "gpt2", "llama", "t5")
# PEFT's prefix tuning runs as a key/value cache on these; T5 (decoder only, in PEFT), DistilBERT and
# MPNet (no cache) are refused.
PREFIX_ARCHS = ("bert", "roberta", "gpt2", "llama")


def form(arch: str) -> str:
    return "text_to_text" if arch in (*DECODERS, "t5") else "head"


def base_model(path: str, arch: str):
    if form(arch) == "text_to_text":
        return (AutoModelForSeq2SeqLM if arch == "t5" else AutoModelForCausalLM).from_pretrained(path)
    return AutoModel.from_pretrained(path, **({"add_pooling_layer": False} if arch in ("bert", "roberta") else {}))


def inputs(tokenizer, arch: str) -> dict:
    batch = dict(tokenizer(["the movie was really good"], return_tensors="pt"))
    batch.pop("token_type_ids", None)
    if arch == "t5":
        batch["decoder_input_ids"] = torch.tensor([[0, 5, 7]])
    return batch


@torch.no_grad()
def lit_outputs(method, batch: dict) -> torch.Tensor:
    """The backbone's logits (LM forms) or last hidden states at the text's own positions."""
    run = method.prompted(method.default_task)
    kwargs, shift = run.prompted_inputs({k: batch[k] for k in ("input_ids", "attention_mask")})
    if "decoder_input_ids" in batch:
        return method.backbone.model(**kwargs, decoder_input_ids=batch["decoder_input_ids"]).logits
    out = method.backbone.model(**kwargs)
    return (out.logits if hasattr(out, "logits") else out.last_hidden_state)[:, shift:]


@torch.no_grad()
def peft_outputs(model, batch: dict, text_length: int) -> torch.Tensor:
    out = model.eval()(**batch)
    found = out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state
    return found if "decoder_input_ids" in batch else found[:, found.shape[1] - text_length:]


def build(name: str, path: str, arch: str, **settings):
    settings = {"num_virtual_tokens": 3, **settings}
    if name in ("PrefixTuning", "PTuningV2"):
        settings.setdefault("prefix_positions", "first")
    method = getattr(lit_prompts, name)(backbone=path, task_format=form(arch), label_names=LABELS, **settings).eval()
    torch.manual_seed(1)
    with torch.no_grad():  # trained-looking values, far from the initialisation
        for parameter in method.prompt.parameters():
            parameter.normal_(0, 0.5)
    return method


def matrix(cases: list[tuple[str, str]], fast: tuple[str, str]) -> list:
    """Every case; all but ``fast`` in the integration tier (the unit tier keeps one of each kind)."""
    return [pytest.param(*case, id="-".join(case), marks=() if case == fast else pytest.mark.integration)
            for case in cases]


EXPORTS = [("PromptTuning", a) for a in PROMPT_ARCHS] + [("PTuning", a) for a in ("bert", "llama", "t5")] + \
    [(m, a) for m in ("PrefixTuning", "PTuningV2") for a in PREFIX_ARCHS]


@pytest.mark.parametrize("name,arch", matrix(EXPORTS, fast=("PTuningV2", "gpt2")))
def test_export_gives_lit_prompts_outputs_in_peft(name, arch, tiny_backbone, tmp_path):
    path = tiny_backbone(arch)
    method = build(name, path, arch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an exact export warns about nothing
        method.export_peft(tmp_path / "adapter")
    batch = inputs(method.tokenizer, arch)
    ours = lit_outputs(method, batch)
    peft = PeftModel.from_pretrained(base_model(path, arch), tmp_path / "adapter")
    theirs = peft_outputs(peft, batch, ours.shape[1])
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)
    bare = peft_outputs(base_model(path, arch), batch, ours.shape[1])
    assert (bare - ours).abs().max() > 1e-2  # the prompt is in effect on both sides
    settings = json.loads((tmp_path / "adapter" / "prompt.json").read_text())
    assert settings["peft"]["outputs_match"] is True and settings["peft"]["differences"] == []
    # Beside the adapter, lit_prompts' own files: the export loads back with its head.
    again = lit_prompts.load(tmp_path / "adapter")
    torch.testing.assert_close(lit_outputs(again, batch), ours)


def test_prefix_export_in_lit_prompts_positions_says_peft_differs(tiny_backbone, tmp_path):
    path = tiny_backbone("llama")
    method = build("PrefixTuning", path, "llama", prefix_positions="none", reparameterize=False)
    with pytest.warns(UserWarning, match="PEFT numbers them from 3"):
        method.export_peft(tmp_path / "adapter")
    settings = json.loads((tmp_path / "adapter" / "prompt.json").read_text())
    assert settings["peft"]["outputs_match"] is False and settings["peft"]["prefix_positions"] == "none"
    from safetensors import safe_open

    with safe_open(tmp_path / "adapter" / "adapter_model.safetensors", "pt") as file:
        assert file.metadata()["lit_prompts_outputs_match"] == "false"
    batch = inputs(method.tokenizer, "llama")
    ours = lit_outputs(method, batch)
    theirs = peft_outputs(PeftModel.from_pretrained(base_model(path, "llama"), tmp_path / "adapter"), batch, ours.shape[1])
    assert (theirs - ours).abs().max() > 1e-3  # as the warning says
    # The tensors convert exactly all the same: the same prefix run with PEFT's numbering matches.
    peft_numbered = build("PrefixTuning", path, "llama", prefix_positions="first", reparameterize=False)
    peft_numbered.prompt.load_state_dict(method.prompt.state_dict())
    torch.testing.assert_close(theirs, lit_outputs(peft_numbered, batch), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name,arch", [("PrefixTuning", "t5"), ("PTuningV2", "distilbert"), ("PrefixTuning", "mpnet")])
def test_prefix_where_peft_cannot_run_it_is_refused(name, arch, tiny_backbone, tmp_path):
    method = build(name, tiny_backbone(arch), arch, prefix_positions="none")
    with pytest.raises(NotRepresentable, match=arch):
        method.export_peft(tmp_path / "adapter")
    assert not (tmp_path / "adapter" / "adapter_config.json").exists()


def test_prefix_positions_first_is_refused_where_it_means_nothing(tiny_backbone):
    with pytest.raises(ValueError, match="prefix_positions='first'.*t5"):
        build("PrefixTuning", tiny_backbone("t5"), "t5", prefix_positions="first")


def test_prompt_pool_has_no_peft_counterpart(tiny_backbone, tmp_path):
    method = lit_prompts.PromptPool(backbone=tiny_backbone("bert"), label_names=LABELS, pool_size=4, prompt_length=2)
    with pytest.raises(NotRepresentable, match="per-example prompts, pools"):
        method.export_peft(tmp_path / "adapter")


# --- import -----------------------------------------------------------------------------------------
def peft_adapter(kind: str, path: str, arch: str, folder):
    task_type = {"head": "FEATURE_EXTRACTION"}.get(form(arch), "SEQ_2_SEQ_LM" if arch == "t5" else "CAUSAL_LM")
    settings = {"task_type": task_type, "num_virtual_tokens": 3}
    if arch == "distilbert":  # PEFT does not read DistilBERT's config names
        settings.update(token_dim=32, num_layers=2, num_attention_heads=4)
    config = {"PROMPT_TUNING": PromptTuningConfig, "P_TUNING": PromptEncoderConfig,
              "PREFIX_TUNING": PrefixTuningConfig}[kind](**settings)
    model = get_peft_model(base_model(path, arch), config)
    torch.manual_seed(2)
    with torch.no_grad():
        for parameter in model.prompt_encoder.parameters():
            parameter.normal_(0, 0.5)
    model.save_pretrained(folder)
    return folder


IMPORTS = [("PROMPT_TUNING", a) for a in PROMPT_ARCHS] + [("P_TUNING", a) for a in ("bert", "gpt2", "t5")] + \
    [("PREFIX_TUNING", a) for a in PREFIX_ARCHS]


@pytest.mark.parametrize("kind,arch", matrix(IMPORTS, fast=("PREFIX_TUNING", "bert")))
def test_peft_adapter_loads_with_peft_outputs(kind, arch, tiny_backbone, tmp_path):
    path = tiny_backbone(arch)
    folder = peft_adapter(kind, path, arch, tmp_path / "adapter")
    settings = {"label_names": LABELS} | ({} if form(arch) == "text_to_text" else {"task_format": "head"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the head of a head-format import is new, and says so
        method = lit_prompts.load(folder, **settings)
    expected = {"PROMPT_TUNING": "PromptTuning", "P_TUNING": "PTuning", "PREFIX_TUNING": "PrefixTuning"}[kind]
    assert type(method).__name__ == expected and method.hparams.task_format == form(arch)
    batch = inputs(method.tokenizer, arch)
    ours = lit_outputs(method, batch)
    theirs = peft_outputs(PeftModel.from_pretrained(base_model(path, arch), folder), batch, ours.shape[1])
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_imported_text_to_text_predictions_equal_peft_rank_classification(tiny_backbone, tmp_path, reviews):
    path = tiny_backbone("gpt2")
    folder = peft_adapter("PREFIX_TUNING", path, "gpt2", tmp_path / "adapter")
    method = lit_prompts.load(folder, label_names=LABELS)
    data = lit_prompts.PromptDataModule(backbone=path, task_format="text_to_text", label_names=LABELS,
                                        data_files={"test": reviews["unlabelled"]}, batch_size=4)
    data.setup("predict")
    batch = next(iter(data.predict_dataloader()))
    with torch.no_grad():
        ours = method.formats[method.default_task].scores(method.prompted(method.default_task), batch)
        rows = method(batch, "predict")
    # PEFT's own scores: the log-probability of each candidate's label words, one unpadded row at a time.
    peft = PeftModel.from_pretrained(base_model(path, "gpt2"), folder).eval()
    candidates, theirs = batch["candidates"], []
    for ids, mask, targets in zip(candidates["input_ids"], candidates["attention_mask"], candidates["target_ids"]):
        ids, targets = ids[mask.bool()][None], targets[mask.bool()]
        with torch.no_grad():
            logprobs = peft(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, :-1].log_softmax(-1)
        kept = targets[1:] != -100
        theirs.append(logprobs[kept].gather(-1, targets[1:][kept, None]).sum())
    theirs = torch.stack(theirs).view_as(ours)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
    assert [r["label"] for r in rows] == [LABELS[i] for i in theirs.argmax(-1)]


def test_init_from_a_peft_adapter_starts_training_there(tiny_backbone, tmp_path):
    path = tiny_backbone("llama")
    folder = peft_adapter("PROMPT_TUNING", path, "llama", tmp_path / "adapter")
    method = lit_prompts.PromptTuning(backbone=path, task_format="text_to_text", label_names=LABELS,
                                      num_virtual_tokens=3, init_from=str(folder))
    method.apply_init_from()
    adapter = load_file(folder / "adapter_model.safetensors")["prompt_embeddings"]
    torch.testing.assert_close(method.prompt.prompt.detach(), adapter, atol=0, rtol=0)
    assert method.started_from == str(folder)
    wrong = lit_prompts.PromptTuning(backbone=path, task_format="text_to_text", label_names=LABELS,
                                     num_virtual_tokens=5, init_from=str(folder))
    with pytest.raises(ValueError, match=r"init_from .*holds prompt tensors \{'prompt': \[3, 32\]\}.*\[5, 32\]"):
        wrong.apply_init_from()


def test_init_from_an_export_takes_prompt_and_heads(tiny_backbone, tmp_path):
    path = tiny_backbone("bert")
    trained = build("PTuningV2", path, "bert", prefix_positions="none")
    trained.export_prompt(tmp_path / "prompt")
    method = lit_prompts.PTuningV2(backbone=path, label_names=LABELS, num_virtual_tokens=3, init_from=str(tmp_path / "prompt"))
    method.apply_init_from()
    for name, tensor in trained.trainable_state_dict().items():
        torch.testing.assert_close(method.state_dict()[name], tensor, atol=0, rtol=0)
    reparameterized = lit_prompts.PTuningV2(backbone=path, label_names=LABELS, num_virtual_tokens=3, reparameterize=True,
                                            init_from=str(tmp_path / "prompt"))
    with pytest.raises(ValueError, match="reparameterisation"):
        reparameterized.apply_init_from()


# --- bad adapters -----------------------------------------------------------------------------------
def test_an_adapter_of_another_kind_is_refused_naming_it(tiny_backbone, tmp_path):
    path = tiny_backbone("llama")
    model = get_peft_model(base_model(path, "llama"), LoraConfig(task_type="CAUSAL_LM", r=2, target_modules=["q_proj"]))
    model.save_pretrained(tmp_path / "lora")
    with pytest.raises(ValueError, match=r"adapter_config.json: peft_type 'LORA' is not a prompt method"):
        lit_prompts.load(tmp_path / "lora")


def test_a_corrupted_adapter_file_is_refused_naming_it(tiny_backbone, tmp_path):
    folder = peft_adapter("PROMPT_TUNING", tiny_backbone("gpt2"), "gpt2", tmp_path / "adapter")
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])
    with pytest.raises(ValueError, match=r"adapter_model.safetensors cannot be read"):
        lit_prompts.load(folder, label_names=LABELS)
    (folder / "adapter_config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"adapter_config.json is not valid JSON"):
        lit_prompts.load(folder, label_names=LABELS)


def test_an_adapter_for_another_backbone_is_refused(tiny_backbone, tmp_path):
    folder = peft_adapter("PROMPT_TUNING", tiny_backbone("gpt2"), "gpt2", tmp_path / "adapter")
    config = json.loads((folder / "adapter_config.json").read_text())
    config["token_dim"] = 64
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"needs \{'prompt_embeddings': \[3, 64\]\}"):
        lit_prompts.load(folder, label_names=LABELS)
    prefix = peft_adapter("PREFIX_TUNING", tiny_backbone("gpt2"), "gpt2", tmp_path / "prefix")
    with pytest.raises(ValueError, match="made for another backbone"):
        lit_prompts.load(prefix, label_names=LABELS, backbone=tiny_backbone("llama"))


def test_export_command_writes_a_peft_adapter(tiny_backbone, tmp_path, capsys):
    path = tiny_backbone("gpt2")
    build("PromptTuning", path, "gpt2").export_prompt(tmp_path / "prompt")
    main(["export", str(tmp_path / "prompt"), "--output", str(tmp_path / "peft"), "--format", "peft"])
    assert "peft export written to" in capsys.readouterr().out
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["peft_type"] == "PROMPT_TUNING" and config["base_model_name_or_path"] == path
    assert (tmp_path / "peft" / "README.md").is_file()
    peft = PeftModel.from_pretrained(base_model(path, "gpt2"), tmp_path / "peft")
    assert peft.peft_config["default"].num_virtual_tokens == 3


def test_multitask_mpt_exports_with_task_ids(tiny_backbone, tmp_path):
    path = tiny_backbone("llama")
    specs = {name: {"task": "classification", "task_format": "text_to_text", "label_names": labels}
             for name, labels in (("sentiment", LABELS), ("topic", ["sport", "news"]))}
    method = lit_prompts.MultiTaskPromptTuning(backbone=path, task_specs=specs, num_virtual_tokens=3, rank=2).eval()
    torch.manual_seed(3)
    with torch.no_grad():
        for parameter in method.prompt.parameters():
            parameter.normal_(0, 0.5)
    method.export_peft(tmp_path / "adapter")
    settings = json.loads((tmp_path / "adapter" / "prompt.json").read_text())
    assert settings["peft"]["task_ids"] == {"sentiment": 0, "topic": 1}
    peft = PeftModel.from_pretrained(base_model(path, "llama"), tmp_path / "adapter").eval()
    batch = inputs(method.tokenizer, "llama")
    for task, task_id in settings["peft"]["task_ids"].items():
        run = method.prompted(task)
        with torch.no_grad():
            kwargs, shift = run.prompted_inputs(batch)
            ours = method.backbone.model(**kwargs).logits[:, shift:]
            theirs = peft(**batch, task_ids=torch.tensor([task_id])).logits[:, 3:]
        torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)
    layered = lit_prompts.MultiTaskPromptTuning(backbone=path, task_specs=specs, num_virtual_tokens=3, placement="layers")
    with pytest.raises(NotRepresentable, match="no PEFT counterpart"):
        layered.export_peft(tmp_path / "layered")


def test_fit_from_a_peft_adapter_exports_a_peft_adapter(tiny_backbone, tmp_path, reviews):
    """Through the CLI: a PEFT prefix adapter starts PrefixTuning in PEFT's position convention, fit trains
    on from it, and the exported adapter gives PEFT the outputs lit_prompts' own export gives."""
    from conftest import data_files_arg, run_cli

    path = tiny_backbone("gpt2")
    start = peft_adapter("PREFIX_TUNING", path, "gpt2", tmp_path / "start")
    run_cli("fit", "--model=PrefixTuning", f"--model.backbone={path}", "--model.num_virtual_tokens=3",
            "--model.reparameterize=false", "--model.prefix_positions=first", f"--model.init_from={start}",
            "--data.task_format=text_to_text", "--data.batch_size=8", "--trainer.max_steps=3",
            "--export.format=peft", f"--export.folder={tmp_path / 'trained'}", data_files_arg(reviews), root=tmp_path)
    trained = load_file(tmp_path / "trained" / "adapter_model.safetensors")["prompt_embeddings"]
    started = load_file(start / "adapter_model.safetensors")["prompt_embeddings"]
    assert trained.shape == started.shape and 0 < (trained - started).abs().max() < 0.5  # trained on from there
    method = lit_prompts.load(tmp_path / "trained")
    batch = inputs(method.tokenizer, "gpt2")
    ours = lit_outputs(method, batch)
    theirs = peft_outputs(PeftModel.from_pretrained(base_model(path, "gpt2"), tmp_path / "trained"), batch, ours.shape[1])
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)


def test_generation_in_peft_numbering_continues_as_the_forward_pass(tiny_backbone):
    """With ``prefix_positions: first`` generation numbers new tokens after the prompt's real ones: its
    first token is the argmax of the forward pass (the pass that equals PEFT's forward)."""
    path = tiny_backbone("llama")
    method = build("PrefixTuning", path, "llama", reparameterize=False)
    batch = {k: v for k, v in inputs(method.tokenizer, "llama").items()}
    run = method.prompted(method.default_task)
    with torch.no_grad():
        generated = method.backbone.generate(batch, *run.prompt_for(batch), "first", max_new_tokens=3,
                                             output_logits=True, return_dict_in_generate=True)
        forward = lit_outputs(method, batch)[0, -1]
    torch.testing.assert_close(generated.logits[0][0], forward, atol=1e-5, rtol=0)
