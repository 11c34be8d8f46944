"""Commands beside Lightning's ``fit / validate / test / predict``, each a module with ``main(args)``:

    python -m lit_prompts export  <checkpoint or prompt> --output DIR [--format peft] [--push org/name]
    python -m lit_prompts inspect <prompt or checkpoint> [more prompts...] [--json]
    python -m lit_prompts plot    <run dir> [--output curves.png]
    python -m lit_prompts serve   --config serve.yaml [--port 8000]

They raise the same input errors as the training commands (reported in one line by ``cli.main``).
"""

from __future__ import annotations

import importlib

COMMANDS = {
    "export": "lit_prompts.commands.export",
    "inspect": "lit_prompts.commands.inspect",
    "plot": "lit_prompts.commands.plot",
    "serve": "lit_prompts.commands.serve",
}


def run_command(name: str, args: list[str]) -> None:
    importlib.import_module(COMMANDS[name]).main(args)
