"""Files and subclasses from lit_prompts 0.1, where a method was one class holding everything."""

from __future__ import annotations

# Hooks a 0.1 subclass overrode to say where its prompt goes; a prompt module does all of it now.
OLD_HOOKS = ("input_prompt", "template_prompt", "install_layer_prompts", "layer_prefixes", "auxiliary_loss",
             "folded_tensors", "embed_inputs", "build_task", "new_head")


def refuse_old_hooks(cls: type) -> None:
    """A subclass written for 0.1 fails at once, saying what to write instead."""
    found = [name for name in OLD_HOOKS if name in vars(cls)]
    if found:
        raise TypeError(
            f"{cls.__qualname__} overrides {', '.join(found)}: hooks of lit_prompts 0.1 that no longer exist. Write the "
            "prompt as an nn.Module whose forward(context) returns a lit_prompts.PromptOutput (prepend=[B, P, H], "
            "layer_hidden=[L, P, H], layer_kv, slots, aux_loss) and set self.prompt = YourPrompt(...) after "
            "super().__init__(**kwargs) in your method's __init__ (README: 'Adding a method')"
        )


def upgrade_state_names(state: dict, wanted: set[str], tasks: list[str]) -> dict:
    """0.1 tensor names -> today's: the method's own tensors now live in ``prompt.``, a task's head in
    ``formats.<task>.head.``, the backbone's weights (full fine-tuning) in ``backbone.model.``."""
    single = tasks[0] if len(tasks) == 1 else None
    upgraded = {}
    for name, tensor in state.items():
        candidates = [name, f"prompt.{name}", f"backbone.model.{name.removeprefix('backbone.')}"]
        if name.startswith("head.") and single:
            candidates.append(f"formats.{single}.{name}")
        if name.startswith("heads."):
            task, _, rest = name.removeprefix("heads.").partition(".")
            candidates.append(f"formats.{task}.head.{rest}")
        upgraded[next((c for c in candidates if c in wanted), name)] = tensor
    return upgraded
