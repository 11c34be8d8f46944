"""Files written by lit_prompts 0.1.0 (tests/fixtures/release_0_1, see make_release_fixtures.py)
still load, and predict exactly what 0.1.0 predicted from them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from release_cases import CASES, case_data, predict_rows

import lit_prompts

FIXTURES = Path(__file__).parent / "fixtures" / "release_0_1"


@pytest.mark.integration
@pytest.mark.parametrize("name", sorted(CASES))
def test_release_0_1_files_load_and_predict_identically(name, tiny_backbone, tmp_path):
    case = CASES[name]
    backbone = tiny_backbone(case["arch"])
    path = FIXTURES / (f"{name}.ckpt" if case["kind"] == "checkpoint" else name)
    model = lit_prompts.load(path, backbone=backbone)
    rows = predict_rows(model, case_data(case, backbone, tmp_path))
    expected = json.loads((FIXTURES / f"{name}.predictions.json").read_text())
    assert [{k: v for k, v in r.items() if k != "score"} for r in rows] == \
        [{k: v for k, v in r.items() if k != "score"} for r in expected]
    for got, want in zip(rows, expected):
        if want.get("score") is not None:
            assert got["score"] == pytest.approx(want["score"], abs=1e-5)
