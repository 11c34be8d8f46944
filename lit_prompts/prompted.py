"""``Prompted``: a prompt module on a ``PromptedBackbone`` for one task, as task formats read it
(``tasks.protocol.PromptedModel``). Made per step; it collects the prompt's auxiliary losses."""

from __future__ import annotations

from torch import Tensor, nn

from .methods.base import PromptOutput
from .prompted_backbone import PromptedBackbone


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


def share_hidden_states(runs: dict, batches: dict, keys: list, call_cost: float | None = None,
                        packed: bool = False) -> int:
    """Run the sub-batches ``batches[k]`` of ``keys`` (whose formats read hidden states) in one backbone
    call, each row with its own prompt; ``runs[k]`` then carries its hidden states. Returns the number
    of calls made: 0 (nothing changed) for fewer than two sub-batches, or prompts placed in templates.

    ``packed``: the rows are packed end to end without padding (``PromptedBackbone.hidden_states_packed``)
    where the backbone's attention kernel takes block-diagonal masks (eager, sdpa). Otherwise
    (``hidden_states_together``) a call pads every row to the widest (prompt + text) of the call; with
    ``call_cost`` (a call's fixed cost in padded positions, ``scripts/bench_call_cost.py`` measures it),
    sub-batches of very different widths (short reviews beside long QA contexts) split into calls by
    width where the padding saved outweighs the cost of the extra calls."""
    if len(keys) < 2 or any("virtual_index" in batches[k] for k in keys):  # [P:n] templates run alone
        return 0
    prompted = {k: runs[k].prompt_for(batches[k]) for k in keys}
    backbone = runs[keys[0]].backbone
    if packed and backbone.packs:
        groups, join = [keys], backbone.hidden_states_packed
    else:
        sizes = {k: tuple(batches[k]["input_ids"].shape) for k in keys}
        widths = {k: prompted[k][0].prepended + sizes[k][1] for k in keys}
        groups = [keys] if call_cost is None else width_groups({k: (sizes[k][0], widths[k]) for k in keys}, call_cost)
        join = backbone.hidden_states_together
    for group in groups:
        hidden = join([(batches[k], *prompted[k]) for k in group])
        for k, states in zip(group, hidden):
            runs[k] = WithHiddenStates(runs[k], batches[k], states)
    return len(groups)


def width_groups(parts: dict, call_cost: float) -> list[list]:
    """Split parts ``{key: (rows, width)}`` into calls minimising the padded positions (each call's rows
    times its widest row) plus ``call_cost`` per call. Sorted by width, an optimal split takes
    consecutive runs, found by dynamic programming over the (few) parts."""
    order = sorted(parts, key=lambda k: parts[k][1], reverse=True)
    best = [0.0] + [float("inf")] * len(order)  # best[j]: cost of the first j parts
    cut = [0] * (len(order) + 1)
    for j in range(1, len(order) + 1):
        rows = 0
        for i in range(j - 1, -1, -1):  # the last call holds order[i:j]; its widest is order[i]
            rows += parts[order[i]][0]
            cost = best[i] + rows * parts[order[i]][1] + call_cost
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], len(order)
    while j:
        groups.append(order[cut[j]:j])
        j = cut[j]
    return groups[::-1]
