"""Every YAML in configs/ is parsed and run for a few steps through the CLI.

Hub ids cannot be reached here, so task configs run with the backbone swapped for a tiny one of
the same family and SST-2 read from ../shared/data; the quickstart runs exactly as shipped. Trainer
configs run with their hardware swapped for CPUs (DDP as ddp_spawn over two processes, FSDP over two
gloo processes).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from conftest import REPO, SHARED_DATA, data_files_arg, run_cli

CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))
TASK_CONFIGS = [c for c in CONFIGS if "trainer" not in c.parts]
TRAINER_CONFIGS = [c for c in CONFIGS if "trainer" in c.parts]
TINY_FOR_FORMAT = {"head": "bert", "cloze": "roberta", "text_to_text": "llama", "token": "bert", "span": "bert"}
FEW_STEPS = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=2",
             "--trainer.val_check_interval=1.0", "--trainer.max_steps=-1"]
SST2 = {"train": str(SHARED_DATA / "sst2" / "train.tsv"), "validation": str(SHARED_DATA / "sst2" / "dev.tsv")}
CONLL = {"train": str(SHARED_DATA / "conll2003" / "train.txt"), "validation": str(SHARED_DATA / "conll2003" / "valid.txt")}
SQUAD_DEV = SHARED_DATA / "squad_v1.1" / "dev-v1.1.json"


def local_copies(dataset: str, tmp_path) -> dict[str, str]:
    """../shared/data in place of a hub dataset (SQuAD: its dev set split by article, by the script)."""
    if dataset == "stanfordnlp/sst2":
        return SST2
    if dataset == "eriktks/conll2003":
        return CONLL
    assert dataset == "rajpurkar/squad", dataset
    split = tmp_path / "squad_split"
    subprocess.run([sys.executable, str(REPO / "scripts" / "split_squad_by_article.py"), str(SQUAD_DEV),
                    "--first=40", f"--output={split}"], check=True, capture_output=True)
    return {"train": str(split / "train.json"), "validation": str(split / "validation.json")}


def name(path) -> str:
    return str(path.relative_to(REPO / "configs"))


def test_every_config_is_covered():
    assert {name(c) for c in CONFIGS} == {name(c) for c in TASK_CONFIGS + TRAINER_CONFIGS}
    for config in CONFIGS:
        assert config.read_text().startswith("#"), f"{name(config)} must start with its launch command"
        assert "python -m lit_prompts" in config.read_text() or "srun" in config.read_text(), name(config)


def with_local_data(settings: dict, tiny_backbone, tmp_path) -> dict:
    """A multi-task config with each task's hub dataset replaced by ../shared/data and a tiny backbone."""
    tasks = settings["data"]["init_args"]["tasks"]
    formats = {spec["task_format"] for spec in tasks.values()}
    settings["model"]["init_args"]["backbone"] = tiny_backbone(TINY_FOR_FORMAT[sorted(formats)[0]])
    for spec in tasks.values():
        spec["data_files"] = local_copies(spec.pop("dataset"), tmp_path)
        spec.pop("splits", None)
    return settings


@pytest.mark.parametrize("config", TASK_CONFIGS, ids=name)
def test_task_config_runs(config, tiny_backbone, tmp_path):
    settings = yaml.safe_load(config.read_text())
    if "tasks" in settings["data"]["init_args"]:
        if not SHARED_DATA.is_dir():
            pytest.skip("../shared/data is not beside the repository")
        local = tmp_path / "local.yaml"
        local.write_text(yaml.safe_dump(with_local_data(settings, tiny_backbone, tmp_path)))
        cli = run_cli("fit", f"--config={local}", *FEW_STEPS, f"--trainer.default_root_dir={tmp_path}", root=tmp_path)
        assert cli.trainer.global_step == 2
        logged = set(cli.trainer.callback_metrics)
        assert "val/macro" in logged and all(any(k.startswith(f"val/{t}/") for k in logged) for t in settings["data"]["init_args"]["tasks"])
        assert (tmp_path / "lightning_logs" / "version_0" / "prompt" / "prompt.safetensors").is_file()
        return
    overrides = list(FEW_STEPS)
    if settings["model"]["init_args"]["backbone"].startswith("pkg://"):
        pass  # an installed backbone: run as shipped
    else:
        tiny = tiny_backbone(TINY_FOR_FORMAT[settings["data"]["init_args"]["task_format"]])
        overrides.append(f"--model.backbone={tiny}")
    dataset = settings["data"]["init_args"].get("dataset")
    if dataset:
        if not SHARED_DATA.is_dir():
            pytest.skip("../shared/data is not beside the repository")
        overrides.append(data_files_arg(local_copies(dataset, tmp_path), splits=("train", "validation")))
    cli = run_cli("fit", f"--config={config}", *overrides, f"--trainer.default_root_dir={tmp_path}", root=tmp_path)
    assert cli.trainer.global_step == 2
    assert (tmp_path / "lightning_logs" / "version_0" / "prompt" / "prompt.safetensors").is_file()


@pytest.mark.parametrize("config", TRAINER_CONFIGS, ids=name)
def test_trainer_config_runs_on_cpus(config, tiny_backbone, reviews, tmp_path):
    trainer = yaml.safe_load(config.read_text())["trainer"]
    hardware = ["--trainer.accelerator=cpu", "--trainer.num_nodes=1"]
    sharded = trainer.get("strategy") == "prompt_fsdp"
    if trainer.get("strategy") == "ddp":
        hardware += ["--trainer.strategy=ddp_spawn", "--trainer.devices=2"]
    elif sharded:  # two gloo processes, which Lightning starts by running the command again
        hardware += ["--trainer.devices=2"]
    else:
        hardware += ["--trainer.devices=1"]
    task = [
        "--model=PromptTuning",
        f"--model.backbone={tiny_backbone('gpt2')}",  # tied embeddings: sharding unties them
        "--model.num_virtual_tokens=2",
        data_files_arg(reviews, splits=("train", "validation")),
        "--data.batch_size=8",
    ]
    args = ["fit", f"--config={config}", *task, *hardware, *FEW_STEPS, f"--trainer.default_root_dir={tmp_path}"]
    if sharded:
        done = subprocess.run([sys.executable, "-m", "lit_prompts", *args], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "Starting with 2 processes" in done.stdout + done.stderr
    else:
        cli = run_cli(*args, root=tmp_path)
        assert cli.trainer.world_size == (2 if trainer.get("strategy") == "ddp" else 1)
    # Everything but the hardware came from the file.
    saved = yaml.safe_load((tmp_path / "lightning_logs" / "version_0" / "config.yaml").read_text())
    assert str(saved["trainer"]["precision"]) == str(trainer.get("precision", "32-true"))
    assert saved["trainer"]["max_epochs"] == 1
    if sharded:
        assert saved["trainer"]["strategy"] == "prompt_fsdp"
    assert saved["trainer"]["log_every_n_steps"] == trainer["log_every_n_steps"]
    assert (tmp_path / "lightning_logs" / "version_0" / "prompt" / "prompt.safetensors").is_file()
    json.dumps(saved["data"])  # the saved config is plain data
