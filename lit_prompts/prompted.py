"""``Prompted``: a prompt module on a ``PromptedBackbone`` for one task, as task formats read it
(``tasks.protocol.PromptedModel``). Made per step; it collects the prompt's auxiliary losses."""

from __future__ import annotations

from torch import Tensor, nn

from .methods.base import PromptOutput
from .prompted_backbone import PromptedBackbone, PromptsDoNotJoin


class Prompted:
    """``prefix_positions``: how real tokens are numbered beside a layer prefix (see ``PromptMethod``)."""

    def __init__(self, backbone: PromptedBackbone, prompt: nn.Module, task: str | None = None,
                 prefix_positions: str = "none"):
        self.backbone, self.prompt, self.task = backbone, prompt, task
        self.prefix_positions = prefix_positions
        self.aux_losses: list[Tensor] = []

    def prompt_for(self, inputs: dict) -> tuple[PromptOutput, Tensor]:
        """The prompt output for a batch's inputs, and the batch's token embeddings."""
        context = self.backbone.context(inputs, self.task)
        output = self.prompt(context)
        if output.aux_loss is not None:
            self.aux_losses.append(output.aux_loss)
        return output, context.input_embeds

    @property
    def aux_loss(self) -> Tensor | None:
        return sum(self.aux_losses) if self.aux_losses else None

    def prompted_inputs(self, inputs: dict) -> tuple[dict, int]:
        """The backbone's keyword arguments with the prompt in place, and the prepended length. The
        readers below run the backbone only after this has returned: the text's own embeddings, which
        the prompted ones replace, are then freed before the forward pass instead of living through it."""
        return self.backbone.prompted_inputs(inputs, *self.prompt_for(inputs), prefix_positions=self.prefix_positions)

    def hidden_states(self, batch: dict) -> Tensor:
        return self.backbone.hidden_states_of(self.prompted_inputs(batch))

    def masked_lm_logits(self, batch: dict) -> Tensor:
        return self.backbone.masked_lm_logits_of(self.prompted_inputs(batch))

    def sequence_logprobs(self, seqs: dict, reduction: str) -> Tensor:
        return self.backbone.sequence_logprobs_of(self.prompted_inputs(seqs), seqs["target_ids"], reduction)

    def generate_text(self, source: dict, max_new_tokens: int, num_beams: int) -> list[str]:
        output, embeds = self.prompt_for(source)
        ids = self.backbone.generate(source, output, embeds, self.prefix_positions, max_new_tokens=max_new_tokens,
                                     num_beams=num_beams)
        return self.backbone.tokenizer.batch_decode(ids, skip_special_tokens=True)


class WithHiddenStates(Prompted):
    """``Prompted`` whose hidden states of one batch were computed already (a shared forward pass)."""

    def __init__(self, base: Prompted, batch: dict, hidden: Tensor):
        super().__init__(base.backbone, base.prompt, base.task, base.prefix_positions)
        self.batch, self.hidden = batch, hidden

    def hidden_states(self, batch: dict) -> Tensor:
        return self.hidden if batch is self.batch else super().hidden_states(batch)


def share_hidden_states(runs: dict, batches: dict, keys: list) -> bool:
    """Run the sub-batches ``batches[k]`` of ``keys`` (whose formats read hidden states) in one backbone
    call, each row with its own prompt (``PromptedBackbone.hidden_states_together``); ``runs[k]`` then
    carries its hidden states. False (nothing changed) for fewer than two, or prompts placed in templates."""
    if len(keys) < 2:
        return False
    backbone = runs[keys[0]].backbone
    try:
        hidden = backbone.hidden_states_together([(batches[k], *runs[k].prompt_for(batches[k])) for k in keys])
    except PromptsDoNotJoin:  # prompts placed in a template's [P:n] positions: one call per part
        return False
    for k, states in zip(keys, hidden):
        runs[k] = WithHiddenStates(runs[k], batches[k], states)
    return True
