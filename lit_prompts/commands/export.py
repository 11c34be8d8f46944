"""``python -m lit_prompts export``: write a trained prompt in lit_prompts' format or as a PEFT adapter,
with a model card, and optionally push it to the Hugging Face Hub.

    python -m lit_prompts export runs/sst2/.../best.ckpt --output sst2-prompt --format peft
    python -m lit_prompts export sst2-prompt --output sst2-prompt-peft --format peft --push me/sst2-prompt
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..cli_errors import PROG
from ..hub import prompt_folder
from ..loading import load
from ..safe_reading import SETTINGS_FILE


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"{PROG} export", description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="a checkpoint (.ckpt), an exported prompt folder, a PEFT adapter folder, or a Hub "
                                  "repo id (org/name[@revision])")
    p.add_argument("--output", required=True, help="folder to write")
    p.add_argument("--format", choices=("lit_prompts", "peft"), default="lit_prompts",
                   help="peft: also adapter_config.json + adapter_model.safetensors, which PeftModel.from_pretrained reads")
    p.add_argument("--backbone", help="load the backbone from here instead of the name the source records")
    p.add_argument("--revision", help="the Hub revision of a repo-id source")
    p.add_argument("--trust-code", action="store_true", help="allow method classes lit_prompts does not know")
    p.add_argument("--allow-other-weights", action="store_true",
                   help="use --backbone even when its weights differ from those the prompt was trained on")
    p.add_argument("--license", help="the model card's license field (e.g. apache-2.0)")
    p.add_argument("--push", metavar="REPO_ID", help="upload the folder to this Hub repo (org/name) after writing it")
    p.add_argument("--private", action="store_true", help="with --push: create the repo private")
    return p


def main(args: list[str]) -> None:
    options = parser().parse_args(args)
    overrides = {"backbone": options.backbone} if options.backbone else {}
    method = load(options.source, trust_code=options.trust_code, allow_other_weights=options.allow_other_weights,
                  revision=options.revision, **overrides)
    output = Path(options.output)
    training = recorded_training(options.source, options.revision)
    if options.format == "peft":
        path = method.export_peft(output, training=training)
    else:
        path = method.export_prompt(output, training=training)
    from ..hub import push_prompt, write_model_card

    card = write_model_card(output, license=options.license, repo_id=options.push)
    print(f"{options.format} export written to {path.parent} (model card {card.name})")
    if options.push:
        where = push_prompt(output, options.push, private=options.private, license=options.license)
        print(f"pushed to {where}")


def recorded_training(source: str, revision: str | None) -> dict | None:
    """How an exported source was measured (prompt.json's ``training``), carried into the new export."""
    folder = prompt_folder(source, revision)
    settings = folder / SETTINGS_FILE
    if not settings.is_file():
        return None
    try:
        training = json.loads(settings.read_text(encoding="utf-8")).get("training")
    except (ValueError, AttributeError):  # load() has read it already; anything odd simply is not carried
        return None
    return training if isinstance(training, dict) else None
