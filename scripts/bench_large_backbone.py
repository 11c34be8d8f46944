"""Throughput, memory and model FLOPs utilisation of prompt methods on a large frozen decoder.

A Llama-shaped decoder is built from its config with random weights (speed does not depend on the
values; ~1.1B parameters by default: hidden 2048, 22 layers, grouped-query attention 32/4, MLP 5632,
vocabulary 32000), saved once in bfloat16, and loaded by each run as lit_prompts loads any backbone.
Every combination of method (PromptTuning, PrefixTuning, PTuningV2), weights (bf16, 4-bit NF4) and
gradient checkpointing (off, on) trains ``--steps`` head-format steps on random token batches of
``--seq`` tokens. Per run: tokens/s, peak accelerator memory, and MFU counting 4·N·T FLOPs per step
(N frozen parameters, T tokens including the prompt: a forward pass and the input-gradient half of
the backward; the frozen weights get no gradient), against ``--peak-tflops``.

    HF_HUB_OFFLINE=1 python scripts/bench_large_backbone.py --output bench/large.json        # a GPU
    python scripts/bench_large_backbone.py --tiny --device cpu --steps 2                    # a smoke run
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import LlamaConfig, LlamaModel  # noqa: E402

from lit_prompts.training.methods import PrefixTuning, PromptTuning, PTuningV2  # noqa: E402

METHODS = {"PromptTuning": PromptTuning, "PrefixTuning": PrefixTuning, "PTuningV2": PTuningV2}
ONE_B = dict(hidden_size=2048, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
             intermediate_size=5632, vocab_size=32000)
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, vocab_size=1000)


def save_backbone(folder: Path, shape: dict, seq: int) -> int:
    """A random Llama-shaped model saved in bf16; returns its parameter count."""
    config = LlamaConfig(**shape, max_position_embeddings=max(2048, seq + 64), tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaModel(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def run(args, backbone: str, n_params: int, method: str, weights: str, checkpointing: bool) -> dict:
    device = torch.device(args.device)
    settings = dict(backbone=backbone, label_names=["a", "b"], num_virtual_tokens=args.virtual_tokens,
                    backbone_dtype="bfloat16", gradient_checkpointing=checkpointing, head_dropout=0.0,
                    quantization=None if weights == "bf16" else weights)
    if method in ("PrefixTuning", "PTuningV2"):  # the random model has no tokenizer for the real-word start (init: words)
        settings["init"] = "vocab"
    model = METHODS[method](**settings)
    if weights == "bf16":
        model = model.to(device)
    else:  # bitsandbytes placed the frozen weights on the GPU already; move the prompt side only
        model.prompt.to(device)
        model.formats.to(device)
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3)
    tokens = args.batch_size * args.seq
    batch = {"input_ids": torch.randint(10, 1000, (args.batch_size, args.seq), device=device),
             "attention_mask": torch.ones(args.batch_size, args.seq, dtype=torch.long, device=device),
             "label": torch.randint(0, 2, (args.batch_size,), device=device), "ids": list(range(args.batch_size))}
    prompt_tokens = args.batch_size * model.prompt_length()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(args.warmup + args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        loss = model.training_loss(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - started)
    step_s = statistics.median(times)
    flops = 4 * n_params * (tokens + prompt_tokens)
    result = {"method": method, "weights": weights, "gradient_checkpointing": checkpointing, "step_s": step_s,
              "tokens_per_s": tokens / step_s, "mfu": flops / step_s / (args.peak_tflops * 1e12),
              "loss": loss.item()}
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    del model, optimizer
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a tiny model (smoke runs, CPU)")
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--virtual-tokens", type=int, default=20)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100/H200 SXM: 989)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--weights", nargs="+", default=["bf16", "4bit"], choices=["bf16", "4bit", "8bit"])
    parser.add_argument("--checkpointing", nargs="+", default=["off", "on"], choices=["off", "on"])
    parser.add_argument("--output")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as folder:
        n_params = save_backbone(Path(folder), TINY if args.tiny else ONE_B, args.seq)
        print(f"Llama-shaped decoder, {n_params / 1e9:.3f}B parameters, batch {args.batch_size} x {args.seq} tokens")
        print(f"{'method':13} {'weights':7} {'ckpt':4} {'step s':>8} {'tokens/s':>10} {'peak GiB':>9} {'MFU':>6}")
        for method, weights, ckpt in itertools.product(args.methods, args.weights, args.checkpointing):
            try:
                r = run(args, folder, n_params, method, weights, ckpt == "on")
            except (ValueError, ImportError, torch.OutOfMemoryError) as error:  # e.g. 4-bit without a GPU
                results.append({"method": method, "weights": weights, "gradient_checkpointing": ckpt == "on",
                                "error": str(error).splitlines()[0]})
                print(f"{method:13} {weights:7} {ckpt:4} not run: {results[-1]['error'][:90]}")
                continue
            results.append(r)
            memory = f"{r['peak_memory_gib']:9.2f}" if "peak_memory_gib" in r else f"{'-':>9}"
            print(f"{method:13} {weights:7} {ckpt:4} {r['step_s']:8.3f} {r['tokens_per_s']:10.0f} {memory} "
                  f"{100 * r['mfu']:5.1f}%")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps({"params": n_params, "args": vars(args), "runs": results}, indent=2))


if __name__ == "__main__":
    main()
