"""The data side stands on its own: every task's encoder has the one ``TaskData`` interface, and the
data package imports nothing of the model side."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO

from lit_prompts import PromptDataModule
from lit_prompts.data.datamodule import DATA_ENCODERS
from lit_prompts.data.encoding import TaskData
from lit_prompts.formats import TASK_FORMATS

GROUND_FLOOR = {"lit_prompts.backbone", "lit_prompts.prefix_injection", "lit_prompts.contexts", "lit_prompts.formats",
                "lit_prompts.ner_spans"}


def test_the_registry_has_an_encoder_for_every_task():
    assert set(DATA_ENCODERS) == set(TASK_FORMATS)


@pytest.mark.parametrize("task,task_format", [(t, f) for t, formats in TASK_FORMATS.items() for f in formats])
def test_every_encoder_is_task_data(task, task_format, tiny_backbone):
    backbone = tiny_backbone("t5" if task_format == "text_to_text" else "bert")
    dm = PromptDataModule(backbone=backbone, task=task, task_format=task_format, dataset="unused", stride=64,
                          label_names={"ner": ["O", "B-PER", "I-PER"]}.get(task, ["negative", "positive"]))
    assert isinstance(dm.encoder, TaskData) and isinstance(dm.encoder, DATA_ENCODERS[task])
    assert dm.template_virtual_tokens == 0
    assert callable(dm.collator(train=True)) and callable(dm.collator(train=False))


@pytest.mark.integration  # a subprocess
def test_the_data_package_imports_no_model_code():
    # The package's own __init__ imports everything; a bare stand-in for it shows what data/ pulls in.
    script = (
        "import json, sys, types\n"
        f"package = types.ModuleType('lit_prompts'); package.__path__ = [{str(REPO / 'lit_prompts')!r}]\n"
        "sys.modules['lit_prompts'] = package\n"
        "import lit_prompts.data\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('lit_prompts'))))\n"
    )
    loaded = json.loads(subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True).stdout)
    outside = {m for m in loaded if m != "lit_prompts" and not m.startswith("lit_prompts.data")}
    assert outside <= GROUND_FLOOR, sorted(outside - GROUND_FLOOR)


def test_rows_are_checked_before_labels_are_read_or_the_tokenizer_loads(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"sentence": "good", "label": "positive"}\n')  # no text column, and one label only
    dm = PromptDataModule(backbone=str(tmp_path / "no-model"), data_files={"train": str(path)})
    with pytest.raises(KeyError, match=r"train\.jsonl: missing column 'text'"):
        dm.setup("fit")
