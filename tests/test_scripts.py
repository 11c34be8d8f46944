"""The benchmark script runs end to end on a tiny backbone and reports sane figures."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO, review_rows


def test_prompt_tuning_benchmark_smoke(tiny_backbone, tmp_path):
    data = tmp_path / "train.tsv"
    rows = review_rows(16, seed=0)
    data.write_text("sentence\tlabel\n" + "".join(f"{r['text']}\t{int(r['label'] == 'positive')}\n" for r in rows))
    output = tmp_path / "bench.json"
    command = [sys.executable, str(REPO / "scripts" / "bench_prompt_tuning.py"), f"--backbone={tiny_backbone('bert')}",
               f"--data={data}", "--batch-size=4", "--virtual-tokens=2", "--warmup=1", "--steps=2", f"--output={output}"]
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=300)
    result = json.loads(output.read_text())
    hidden = 32
    variants = result["variants"]
    assert set(variants) == {"prompt", "full", "forward", "forward_eval", "peft"}
    assert all(v["median_ms"] > 0 and len(v["times_ms"]) == 2 for v in variants.values())
    assert variants["prompt"]["trainable_params"] == 2 * hidden + (hidden * 2 + 2)  # prompt + head
    assert variants["peft"]["frozen_params_with_grad"] == 0 == variants["prompt"]["frozen_params_with_grad"]
    assert variants["full"]["trainable_params"] == variants["full"]["total_params"]
    assert result["mean_padded_tokens_with_prompt"] == result["mean_padded_tokens"] + 2
    assert all(r > 0 for r in result["ratios"].values())
