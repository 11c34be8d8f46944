"""Training behaviour through the CLI (resume: test_resume.py): DDP, bf16, the parameter report, user subclasses."""

from __future__ import annotations

import csv
import logging
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from conftest import data_files_arg, run_cli

import lit_prompts
from lit_prompts.backbone import load_backbone


def prompt_args(backbone: str, reviews: dict, *extra: str) -> list[str]:
    return [
        "--model=PromptTuning",
        f"--model.backbone={backbone}",
        "--model.num_virtual_tokens=3",
        "--data.batch_size=8",
        data_files_arg(reviews),
        *extra,
    ]


def trained_state(ckpt_path) -> dict:
    return torch.load(ckpt_path, map_location="cpu", weights_only=False)["state_dict"]


@pytest.mark.integration  # a subprocess
def test_a_gloo_process_group_is_destroyed_before_exit(tmp_path):
    # Left to interpreter shutdown, a Gloo group sometimes aborts the process after a finished fit.
    # The check is registered before lit_prompts is imported, so it runs after lit_prompts' handler.
    script = textwrap.dedent(
        f"""
        import atexit
        import torch.distributed as dist
        atexit.register(lambda: print("initialized at exit:", dist.is_initialized()))
        import lit_prompts
        dist.init_process_group("gloo", init_method="file://{tmp_path / 'store'}", rank=0, world_size=1)
        print("initialized:", dist.is_initialized())
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["initialized: True", "initialized at exit: False"]


@pytest.mark.integration  # subprocesses
@pytest.mark.parametrize("backend", ["gloo", None])
def test_a_finished_gloo_process_runs_its_exit_handlers_and_skips_finalisation(backend, tmp_path):
    # After a sharded fit a Gloo group outlives its destroy, and finalising beside its threads can
    # abort the finished process; so such a process exits straight after its exit handlers.
    script = textwrap.dedent(
        f"""
        import atexit, os
        import torch.distributed as dist
        from lit_prompts.process_group import end_process

        class Finalised:
            def __del__(self, write=os.write):
                write(1, b"finalised\\n")

        kept = Finalised()  # a module global: only finalisation deletes it
        atexit.register(lambda: print("exit handler; initialized:", dist.is_initialized()))
        if {backend!r}:
            dist.init_process_group({backend!r}, init_method="file://{tmp_path / 'store'}", rank=0, world_size=1)
        print("done")  # still buffered: the pipe is not a terminal
        end_process()
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    if backend == "gloo":
        assert lines == ["done", "exit handler; initialized: False"]
    else:
        assert lines == ["done", "exit handler; initialized: False", "finalised"]


def test_ddp_spawn_two_processes(tiny_backbone, reviews, tmp_path):
    args = prompt_args(tiny_backbone("gpt2"), reviews, "--trainer.max_epochs=1")
    cli = run_cli("fit", *args, "--trainer.strategy=ddp_spawn", "--trainer.devices=2", root=tmp_path)
    assert cli.trainer.world_size == 2
    folder = tmp_path / "lightning_logs" / "version_0"
    # 32 training examples over 2 processes in batches of 8: 2 optimizer steps, not 4.
    assert torch.load(folder / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 2
    state = trained_state(folder / "checkpoints" / "last.ckpt")
    assert set(state) == {"prompt.prompt", "formats.classification.head.1.weight", "formats.classification.head.1.bias"}
    method = lit_prompts.load(folder / "prompt")
    assert method.prompt.prompt.shape == (3, method.facts.hidden_size)


def test_bf16_mixed_precision_and_bf16_backbone(tiny_backbone, reviews, tmp_path):
    backbone = tiny_backbone("llama")
    extra = ["--trainer.max_epochs=1", "--trainer.precision=bf16-mixed", "--model.backbone_dtype=bfloat16"]
    cli = run_cli("fit", *prompt_args(backbone, reviews, *extra), root=tmp_path)
    model = cli.model
    head = model.formats["classification"].head
    assert model.prompt.prompt.dtype == torch.float32 and head[1].weight.dtype == torch.float32
    assert all(p.dtype == torch.bfloat16 for p in model.backbone.model.parameters())
    fresh = load_backbone(backbone, "head", "bfloat16").state_dict()
    assert all(torch.equal(v, fresh[k]) for k, v in model.backbone.model.state_dict().items())


def test_parameter_report_is_logged(tiny_backbone, reviews, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    cli = run_cli("fit", *prompt_args(tiny_backbone("distilbert"), reviews, "--trainer.max_epochs=1"), root=tmp_path)
    hidden = cli.model.facts.hidden_size
    trainable = 3 * hidden + hidden * 2 + 2
    total = trainable + sum(p.numel() for p in cli.model.backbone.model.parameters())
    with open(tmp_path / "lightning_logs" / "version_0" / "metrics.csv") as f:
        logged = next(r for r in csv.DictReader(f) if r.get("params/trainable"))
    assert int(float(logged["params/trainable"])) == trainable
    assert int(float(logged["params/total"])) == total
    assert f"{trainable:,} trainable of {total:,} parameters" in caplog.text


def test_out_of_tree_subclass_by_import_path(tiny_backbone, reviews, tmp_path, monkeypatch):
    package = tmp_path / "my_prompts"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "methods.py").write_text(
        textwrap.dedent(
            '''
            import torch
            from torch import nn
            from lit_prompts import Prompt, PromptOutput, PromptTuning
            from lit_prompts.methods import SoftPrompt

            class ScaledPrompt(Prompt):
                """A soft prompt times a learned scale; folded into plain vectors for export."""

                def __init__(self, inner: SoftPrompt, start_scale: float = 1.0):
                    super().__init__(start_scale=start_scale)
                    self.inner = inner
                    self.scale = nn.Parameter(torch.full((1,), start_scale))

                def forward(self, context):
                    return PromptOutput(prepend=self.scale * self.inner(context).prepend)

                def folded(self):
                    plain = self.inner.folded()
                    return SoftPrompt(**plain.settings, init=self.scale.detach() * plain.prompt.detach())

            class ScaledPromptTuning(PromptTuning):
                """Prompt tuning with a learned scale on the prompt."""

                def __init__(self, start_scale: float = 1.0, **kwargs):
                    super().__init__(**kwargs)
                    self.prompt = ScaledPrompt(self.prompt, start_scale)
            '''
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    args = prompt_args(tiny_backbone("roberta"), reviews, "--trainer.max_epochs=1")
    args[0] = "--model=my_prompts.methods.ScaledPromptTuning"
    cli = run_cli("fit", *args, "--model.start_scale=2.0", root=tmp_path / "run")
    best = cli.trainer.checkpoint_callback.best_model_path
    assert "prompt.scale" in trained_state(best)
    with pytest.raises(ValueError, match="my_prompts.methods.ScaledPromptTuning.*trust_code=True"):
        lit_prompts.load(best)  # a shared checkpoint may not name code to import
    loaded = lit_prompts.load(best, trust_code=True)
    assert type(loaded).__name__ == "ScaledPromptTuning" and loaded.hparams.start_scale == 2.0


def test_a_subclass_written_for_0_1_hooks_is_refused_at_class_creation():
    """A method overriding a hook that no longer exists fails when its class is made, saying the new way."""
    with pytest.raises(TypeError) as refused:

        class OldStylePromptTuning(lit_prompts.PromptTuning):
            def input_prompt(self, input_embeds, attention_mask):
                return super().input_prompt(input_embeds, attention_mask)

    message = str(refused.value)
    assert "OldStylePromptTuning overrides input_prompt" in message
    assert "PromptOutput" in message and "self.prompt" in message


def test_training_modes_under_the_cli(tiny_backbone, reviews, tmp_path, monkeypatch):
    """Lightning trains modules in the mode it finds them: the method must arrive in training mode,
    with the backbone's dropout as configured and gradient checkpointing really running."""
    import transformers.modeling_utils
    from torch.utils.checkpoint import checkpoint

    from lit_prompts import PromptMethod

    seen, checkpointed = [], []
    step = PromptMethod.training_step

    def recording_step(self, batch, batch_idx):
        seen.append((self.training, self.backbone.model.training, self.formats[self.default_task].head.training))
        return step(self, batch, batch_idx)

    monkeypatch.setattr(PromptMethod, "training_step", recording_step)
    monkeypatch.setattr(transformers.modeling_utils, "checkpoint", lambda *a, **k: checkpointed.append(1) or checkpoint(*a, **k))
    for dropout in (False, True):
        seen.clear(), checkpointed.clear()
        args = prompt_args(tiny_backbone("bert"), reviews, "--trainer.max_epochs=2", f"--model.backbone_dropout={dropout}",
                           "--model.gradient_checkpointing=true")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run_cli("fit", *args, root=tmp_path / str(dropout))
        # The backbone's eval mode is deliberate: Lightning's warning about it is not shown.
        assert not [w for w in caught if "in eval mode" in str(w.message)]
        # Every step of both epochs (the second comes after a validation pass, which must restore the modes).
        assert seen == [(True, dropout, True)] * 8
        assert len(checkpointed) == 8 * 2  # two BERT layers per step


def test_full_finetuning_trains_every_weight(tiny_backbone, reviews, tmp_path):
    args = prompt_args(tiny_backbone("bert"), reviews, "--trainer.max_epochs=1", "--model.optimizer=AdamW",
                       "--model.optimizer.lr=0.001")
    args[0] = "--model=FullFineTuning"
    args.remove("--model.num_virtual_tokens=3")
    cli = run_cli("fit", *args, root=tmp_path)
    model = cli.model
    assert all(p.requires_grad for p in model.parameters())
    fresh = load_backbone(tiny_backbone("bert"), "head").state_dict()
    trained = model.backbone.model.state_dict()
    assert not torch.equal(trained["encoder.layer.0.attention.self.query.weight"], fresh["encoder.layer.0.attention.self.query.weight"])
    state = trained_state(cli.trainer.checkpoint_callback.best_model_path)
    assert set(state) == {f"backbone.model.{k}" for k in fresh} | {"formats.classification.head.1.weight",
                                                                   "formats.classification.head.1.bias"}


def test_last_checkpoint_holds_the_final_step_when_fit_stops_mid_epoch(tiny_backbone, reviews, tmp_path):
    # 32 examples in batches of 8: 4 steps per epoch, validation at each epoch end; max_steps=6
    # stops 2 steps into the second epoch, between validations.
    args = prompt_args(tiny_backbone("bert"), reviews, "--trainer.max_steps=6", "--trainer.max_epochs=-1")
    run_cli("fit", *args, root=tmp_path)
    last = torch.load(tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 6
