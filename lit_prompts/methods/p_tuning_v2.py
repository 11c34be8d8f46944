"""P-tuning v2 (Liu et al., 2022): deep prompts, as hidden states, at every layer.

Shapes: deep prompts [L, P, H] (L self-attention layers, both stacks for T5), so L·P·H values
(+ head). Layer l's prompt [P, H] enters as a key/value prefix through that layer's own frozen key
and value projections (without position), so the input sequence keeps its length and token- and
span-level heads see exactly the input's tokens.
"""

from __future__ import annotations

from torch import Tensor, nn

from .deep import DeepPromptMethod, ReparameterizedPrompt


class PTuningV2(DeepPromptMethod):
    """Deep prompt tuning; plain tensors by default, the MLP reparameterisation as an option.

    Args:
        num_virtual_tokens: prompt length P per layer.
        reparameterize: train through embedding [P, H] → MLP → [P, L·H] (folded at export).
        reparam_hidden_size: the MLP's hidden width.
        prompt_dropout: dropout on the deep prompts while training.
        **kwargs: see ``PromptMethod``.
    """

    default_lr = 1e-2

    def __init__(
        self,
        num_virtual_tokens: int = 20,
        reparameterize: bool = False,
        reparam_hidden_size: int = 512,
        prompt_dropout: float = 0.0,
        **kwargs,
    ):
        super().__init__(num_virtual_tokens, reparameterize, reparam_hidden_size, **kwargs)
        layers, hidden = self.num_layers, self.facts.hidden_size
        if reparameterize:
            self.reparam = ReparameterizedPrompt(num_virtual_tokens, hidden, reparam_hidden_size, layers * hidden)
        else:
            self.deep_prompts = nn.Parameter(self.vocab_embeddings((layers, num_virtual_tokens)))
        self.prompt_dropout = nn.Dropout(prompt_dropout)

    def hidden_prompts(self) -> Tensor:
        """[L, P, H]."""
        if not self.hparams.reparameterize:
            return self.deep_prompts
        length = self.hparams.num_virtual_tokens
        return self.reparam().view(length, self.num_layers, -1).transpose(0, 1)

    def layer_prefixes(self) -> list[tuple[Tensor, Tensor]]:
        prompts = self.prompt_dropout(self.hidden_prompts())
        kv_heads = self.facts.num_key_value_heads
        return [self.injector.project(layer, prompts[layer], kv_heads) for layer in range(self.num_layers)]

    def folded_tensors(self) -> dict[str, Tensor]:
        return {"deep_prompts": self.hidden_prompts().contiguous()}
