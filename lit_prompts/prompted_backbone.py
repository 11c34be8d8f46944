"""``PromptedBackbone``: a frozen Hugging Face model that runs with a prompt output in place.

It embeds the tokens, puts a ``PromptOutput`` where it says (in front of the embeddings, into a
template's virtual positions, or into every self-attention layer through ``PrefixInjector``), and
returns what task formats read: hidden states of the text's own tokens, masked-LM logits, target
log-probabilities, generated ids. Rows may carry prompts of their own, and several batches that read
hidden states can share one forward pass (``hidden_states_together``).
"""

from __future__ import annotations

import inspect
from functools import cached_property

import torch
from torch import Tensor, nn
from transformers import AutoTokenizer, PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer

from .backbone import ArchitectureFacts, backbone_fingerprint, load_backbone, resolve_path
from .formats import IGNORE_INDEX
from .methods.base import PromptContext, PromptOutput
from .packing import Segment, block_mask, packed_prefixes, place
from .pooling import sequence_logprobs
from .prefix_injection import SUPPORTED_KERNELS, PrefixInjector, find_self_attention, kernel_name

# Encoders whose real tokens ``prefix_positions: first`` can number after a prefix (``positions_after``).
PREFIX_POSITION_ENCODERS = {"bert": "from_zero", "electra": "from_zero", "roberta": "after_padding",
                            "xlm-roberta": "after_padding", "camembert": "after_padding"}
# Encoders that number an unpadded row from the padding index + 1 (see ``packed_position_start``).
PACKED_AFTER_PADDING = {t for t, numbering in PREFIX_POSITION_ENCODERS.items() if numbering == "after_padding"} | {"mpnet"}
# Attention's cost per key and position, over hidden size, relative to a position's own work
# (``packing.cost``): 4H^2 + 8H^2 MACs of projections and MLP against 2H per key in theory (1/6);
# 4 times that on the CPU with a dense mask (MiniLM: attention was 8% of a packed call 58 wide).
ATTENTION_COST = 4 / 6


class PromptsDoNotJoin(ValueError):
    """Prompt outputs that cannot share one forward pass (prompts placed in templates)."""


class PromptedBackbone(nn.Module):
    """``model``: the frozen backbone (loaded by ``load``, or any ``PreTrainedModel``); ``name``: where
    it came from (recorded with trained prompts)."""

    def __init__(self, model: PreTrainedModel, name: str):
        super().__init__()
        self.model = model
        self.name = name
        self.facts = ArchitectureFacts.from_config(model.config)
        self.fingerprint = backbone_fingerprint(name, model)
        self.injector: PrefixInjector | None = None  # attention is rewired only once a layer prompt arrives

    @classmethod
    def load(cls, name: str, task_format: str, dtype: str = "float32", attn_implementation: str | None = None,
             on_meta: bool = False, quantization: str | None = None):
        """The backbone in the form ``task_format`` reads (see ``load_backbone``), frozen."""
        return cls(load_backbone(name, task_format, dtype, attn_implementation, on_meta, quantization), name)

    @property
    def holds_weights(self) -> bool:
        """False in a process that built the model on the meta device (sharding: rank 0 sends the weights)."""
        return not self.model.get_input_embeddings().weight.is_meta

    @cached_property
    def tokenizer(self):
        return AutoTokenizer.from_pretrained(resolve_path(self.name))

    @cached_property
    def num_layers(self) -> int:
        """Self-attention layers a layer prompt covers (T5 text-to-text: encoder and decoder)."""
        return len(find_self_attention(self.model))

    # --- helpers for building prompts -------------------------------------------------------------
    def vocab_embeddings(self, shape: tuple[int, ...]) -> Tensor:
        """Input embeddings (fp32) of random vocabulary tokens, ``[*shape, H]``: prompt vectors of the
        scale the backbone's inputs have. The first ids (padding, special tokens) are skipped."""
        if not self.holds_weights:  # its prompt values will come from rank 0 (sharding)
            return torch.zeros(*shape, self.facts.hidden_size)
        table = self.model.get_input_embeddings().weight.detach().float()
        low = min(1000, table.shape[0] // 2)
        return table[torch.randint(low, table.shape[0], shape)].clone()

    def layer_kv(self, hidden: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Per layer (key, value) of hidden-state prompts [L, P, H] or [B, L, P, H], through each
        layer's own frozen key and value projections (no position)."""
        injector = self._injector()
        kv_heads = self.facts.num_key_value_heads
        return [injector.project(layer, hidden.select(-3, layer), kv_heads) for layer in range(len(injector))]

    @torch.no_grad()
    def prefix_of(self, hidden: Tensor) -> Tensor:
        """[L, 2, H_kv, P, d]: hidden-state prompts [L, P, H] as the keys and values each layer computes
        from them in every forward (``layer_kv``), a prefix that the frozen backbone makes equivalent."""
        return torch.stack([torch.stack(pair) for pair in self.layer_kv(hidden)])

    @torch.no_grad()
    def attention_keys_values(self, input_ids: Tensor, position_ids: Tensor | None = None) -> list[tuple[Tensor, Tensor]]:
        """Per self-attention layer (in the order prefixes take), the keys and values of ``input_ids``
        [1, P] exactly as each attention kernel reads them, the backbone run in eval mode without
        prompts. An encoder-decoder whose decoder takes prefixes (text-to-text) runs the ids through
        both stacks."""
        with self._injector().recording() as recorded:
            self._run_frozen(input_ids, position_ids)
        return self._per_layer(recorded)

    @torch.no_grad()
    def attention_inputs(self, input_ids: Tensor, position_ids: Tensor | None = None) -> list[Tensor]:
        """Per self-attention layer, the hidden states [1, P, H] of ``input_ids`` as that layer's attention
        module receives them (after the norm pre-norm models put in front of it): the hidden states a deep
        prompt stands for, which the layer's own projections turn into keys and values. Run as
        ``attention_keys_values`` runs the backbone."""
        with self._injector().receiving() as received:
            self._run_frozen(input_ids, position_ids)
        return self._per_layer(received)

    def _run_frozen(self, input_ids: Tensor, position_ids: Tensor | None) -> None:
        """The backbone on ``input_ids`` alone: eval mode (no dropout), no prompt, no cache."""
        injector = self._injector()
        kwargs = {"input_ids": input_ids}
        if "decoder" in injector.stacks:
            kwargs["decoder_input_ids"] = input_ids
        if self.facts.is_decoder_only or self.facts.is_encoder_decoder:
            kwargs["use_cache"] = False
        if position_ids is not None:
            kwargs["position_ids"] = position_ids
        modes = {m: m.training for m in self.model.modules()}
        try:
            injector.set(None)
            self.model.eval()
            self.model(**kwargs)
        finally:
            for m, training in modes.items():
                m.training = training

    def _per_layer(self, recorded: dict) -> list:
        injector = self._injector()
        missing = [name for i, (name, _) in enumerate(injector.layers) if i not in recorded]
        if missing:
            raise RuntimeError(f"the backbone ran without calling the attention of {missing}")
        return [recorded[i] for i in range(len(injector))]

    def _injector(self) -> PrefixInjector:
        if self.injector is None:
            self.injector = PrefixInjector(self.model)
            # Another wrapper of the same model (prompts served together) must then clear our prefixes.
            self.model.lit_prompts_rewired = True
        return self.injector

    def keep_checkpointing_active(self) -> None:
        """transformers checkpoints a layer only while that layer is in training mode; flag the
        checkpointed layers alone (not their children, whose attention dropout reads ``training``)
        so that the frozen model's dropout stays as it was set."""
        for module in self.model.modules():
            if isinstance(module, GradientCheckpointingLayer) and module.gradient_checkpointing:
                module.training = True

    def context(self, inputs: dict, task: str | None = None) -> PromptContext:
        """The prompt's view of a batch (``input_ids``, ``attention_mask``)."""
        mask = inputs["attention_mask"]
        source = None
        if "target_ids" in inputs and not self.facts.is_encoder_decoder:  # a decoder's row is source + target
            source = mask * (inputs["target_ids"] == IGNORE_INDEX)
        if not self.holds_weights:  # shapes only, until sharding brings the weights
            embeds = torch.zeros(*mask.shape, self.facts.hidden_size, device=mask.device)
            return PromptContext(embeds, mask, task, frozen_hidden=lambda: embeds, source_mask=source)
        embeds = self.model.get_input_embeddings()(inputs["input_ids"])
        return PromptContext(embeds, mask, task, frozen_hidden=lambda: self.frozen_hidden(embeds, mask),
                             source_mask=source)

    @torch.no_grad()
    def frozen_hidden(self, embeds: Tensor, mask: Tensor) -> Tensor:
        """[B, T, H] last hidden states of the text alone (no prompt), without gradient."""
        self.install_layers(None)
        encoder = self.model.get_encoder() if self.facts.is_encoder_decoder else self.model.base_model
        kwargs = {"position_ids": (mask.cumsum(-1) - 1).clamp(min=0)} if self.facts.is_decoder_only else {}
        return encoder(inputs_embeds=embeds, attention_mask=mask, **kwargs).last_hidden_state

    # --- prompt in place --------------------------------------------------------------------------
    def install_layers(self, prompt: PromptOutput | None) -> None:
        """Put the prompt's layer prefixes in place (or take any away). They stay until the next call,
        so gradient checkpointing recomputes a layer with the same prefix. Hidden-state prompts go in
        as they are: each layer projects its own inside its forward (where FSDP has its weights)."""
        layers = None if prompt is None else prompt.layer_kv
        if prompt is not None and prompt.layer_hidden is not None:
            layers = list(prompt.layer_hidden.unbind(-3))
        self.install_prefixes(layers)

    def install_prefixes(self, layers: list | None) -> None:
        """One prefix per attention layer in place, or none (attention is rewired only once some arrive)."""
        if layers is not None or getattr(self.model, "lit_prompts_rewired", False):
            self._injector().set(layers)

    def release_batch_layers(self) -> None:
        """After a joined pass: its layer prefixes are the batch's rows (per row, packed), not a prompt's
        own tensors. Without gradient nothing recomputes the pass, so they go now rather than staying
        resident until the next call (on a serving GPU: one batch's keys and values of every layer)."""
        if not torch.is_grad_enabled():
            self.install_prefixes(None)

    def check_prefix_positions(self) -> None:
        """``prefix_positions: first`` has a meaning here: real tokens carry absolute or rotary positions
        the model takes as ``position_ids`` (decoders, BERT- and RoBERTa-style encoders)."""
        if not (self.facts.is_decoder_only or self.facts.model_type in PREFIX_POSITION_ENCODERS):
            raise ValueError(
                f"prefix_positions='first' numbers real tokens after the prefix, as PEFT's prefix tuning does; "
                f"{self.facts.model_type} has no such numbering here (PEFT cannot prefix-tune it either): use "
                "prefix_positions: none"
            )

    def positions_after(self, mask: Tensor, shift: int) -> Tensor:
        """Position ids of the real tokens as if ``shift`` positions came before them, the numbering a
        key/value cache of ``shift`` entries (PEFT's prefix) gives: decoders count over real tokens,
        RoBERTa-style encoders start after their padding index, BERT-style ones at 0."""
        if self.facts.is_decoder_only:
            return (mask.cumsum(-1) - 1).clamp(min=0) + shift
        if PREFIX_POSITION_ENCODERS[self.facts.model_type] == "after_padding":
            return (mask.cumsum(-1) + shift) * mask + self.model.config.pad_token_id
        return torch.arange(mask.shape[1], device=mask.device).expand_as(mask) + shift

    def prompted_inputs(self, inputs: dict, prompt: PromptOutput, embeds: Tensor | None = None,
                        prefix_positions: str = "none") -> tuple[dict, int]:
        """Keyword arguments for the model with the prompt in place, and how many positions a
        prepended prompt added in front of the text. ``prefix_positions``: ``none``, layer prefixes
        take no positions; ``first``, they take the first ones (see ``PromptMethod``)."""
        self.install_layers(prompt)
        if embeds is None:
            embeds = self.model.get_input_embeddings()(inputs["input_ids"])
        mask, token_types = inputs["attention_mask"], inputs.get("token_type_ids")
        virtual_index = inputs.get("virtual_index")
        shift = 0
        if virtual_index is not None:
            if prompt.slots is None:
                raise ValueError("the data template has [P:n] virtual tokens, which this prompt cannot fill: use "
                                 "PTuning, or a template without them")
            placed = prompt.slots.to(embeds.dtype)[virtual_index.clamp(min=0)]
            embeds = torch.where((virtual_index >= 0).unsqueeze(-1), placed, embeds)
        elif prompt.prepend is not None:
            prepend = prompt.prepend_rows(embeds.shape[0])
            b, shift = prepend.shape[:2]
            embeds = torch.cat([prepend.to(embeds.dtype), embeds], dim=1)
            mask = torch.cat([mask.new_ones(b, shift), mask], dim=1)
            if token_types is not None:
                token_types = torch.cat([token_types.new_zeros(b, shift), token_types], dim=1)
        kwargs = {"inputs_embeds": embeds, "attention_mask": mask}
        if token_types is not None:
            kwargs["token_type_ids"] = token_types
        if self.facts.is_decoder_only:
            # Decoders are left-padded: count positions over real tokens only, as generation does.
            kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
            kwargs["use_cache"] = False  # a single pass: a cache would only hold tensors longer
        prefix = prompt.layer_prefix_length
        if prefix_positions == "first" and prefix:
            kwargs["position_ids"] = self.positions_after(mask, prefix)
        return kwargs, shift

    # --- what task formats read -----------------------------------------------------------------------
    # Each comes in two forms: from a prompt output, and ``*_of`` the keyword arguments and shift that
    # ``prompted_inputs`` returned. The latter lets a caller (``Prompted``) build the prompted
    # embeddings in a call that has returned before the forward pass, so that no frame still holds the
    # text's own embeddings [B, T, H] through it.
    def hidden_states(self, inputs: dict, prompt: PromptOutput, embeds: Tensor | None = None) -> Tensor:
        """[B, T, H] last hidden states at the text's own positions (encoder form)."""
        return self.hidden_states_of(self.prompted_inputs(inputs, prompt, embeds))

    def hidden_states_of(self, prompted: tuple[dict, int]) -> Tensor:
        kwargs, shift = prompted
        return self.model(**kwargs).last_hidden_state[:, shift:]

    def masked_lm_logits(self, inputs: dict, prompt: PromptOutput, embeds: Tensor | None = None) -> Tensor:
        """[B, T, V] masked-LM logits at the text's own positions (cloze)."""
        return self.masked_lm_logits_of(self.prompted_inputs(inputs, prompt, embeds))

    def masked_lm_logits_of(self, prompted: tuple[dict, int]) -> Tensor:
        kwargs, shift = prompted
        return self.model(**kwargs).logits[:, shift:]

    def sequence_logprobs(self, seqs: dict, prompt: PromptOutput, reduction: str, embeds: Tensor | None = None) -> Tensor:
        """Text-to-text: log-probability of each row's ``target_ids`` (``sum`` per row, or the
        ``token_mean`` over the batch)."""
        return self.sequence_logprobs_of(self.prompted_inputs(seqs, prompt, embeds), seqs["target_ids"], reduction)

    def sequence_logprobs_of(self, prompted: tuple[dict, int], targets: Tensor, reduction: str) -> Tensor:
        kwargs, _ = prompted
        if self.facts.is_encoder_decoder:
            decoder_inputs = self.model.prepare_decoder_input_ids_from_labels(targets)
            logits = self.model(**kwargs, decoder_input_ids=decoder_inputs, use_cache=False).logits
        else:
            # Targets end every (left-padded) row: only the last positions need vocabulary logits.
            keep = int((targets != -100).sum(-1).max()) + 1
            logits = self.model(**kwargs, logits_to_keep=keep).logits[:, :-1]
            targets = targets[:, -(keep - 1):]
        return sequence_logprobs(logits.float(), targets, reduction)

    @torch.no_grad()
    def generate(self, inputs: dict, prompt: PromptOutput, embeds: Tensor | None = None, prefix_positions: str = "none",
                 **settings) -> Tensor:
        """Token ids generated with the prompt in place: only the new tokens for decoders, the decoder
        output (from its start token) for T5. Greedy unless ``settings`` say otherwise."""
        kwargs, _ = self.prompted_inputs(inputs, prompt, embeds, prefix_positions)
        if prefix_positions != "first" or not prompt.layer_prefix_length:
            kwargs.pop("position_ids", None)  # generate derives them from the mask exactly as prompted_inputs does
        kwargs.pop("use_cache", None)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        return self.model.generate(**kwargs, **{"do_sample": False, "pad_token_id": pad, **settings})

    def hidden_states_together(self, parts: list[tuple[dict, PromptOutput, Tensor | None]]) -> list[Tensor]:
        """``hidden_states`` of several batches (e.g. of different tasks or prompts) in one forward pass,
        each row with its own prompt, each part's hidden states as its own call would give them.

        Each row is laid out as it would be alone (its prompt, then its part's text) and padded on the
        side the data pads to the longest of these: right-padded encoders keep their positions
        0..P+T-1 and gain padding after the text; left-padded decoders gain it in front and count
        positions over real tokens. Layer prompts of other lengths (or none) are padded to the longest
        with key/value columns the padded rows do not see."""
        if any("virtual_index" in inputs for inputs, _, _ in parts):
            raise PromptsDoNotJoin("prompts placed in a template's [P:n] positions run one batch at a time")
        # The side the data pads on: decoders on the left (generation continues the text), others on the right.
        left = self.facts.is_decoder_only
        width = max(prompt.prepended + inputs["input_ids"].shape[1] for inputs, prompt, _ in parts)

        def pad(t: Tensor, value) -> Tensor:
            filler = t.new_full((t.shape[0], width - t.shape[1], *t.shape[2:]), value)
            return torch.cat([filler, t] if left else [t, filler], dim=1)

        typed = all("token_type_ids" in inputs for inputs, _, _ in parts)
        rows: dict[str, list[Tensor]] = {"embeds": [], "mask": [], "types": []}
        for inputs, prompt, embeds in parts:
            embeds = embeds if embeds is not None else self.model.get_input_embeddings()(inputs["input_ids"])
            mask, types = inputs["attention_mask"], inputs.get("token_type_ids")
            b, shift = embeds.shape[0], prompt.prepended
            if shift:
                embeds = torch.cat([prompt.prepend_rows(b).to(embeds.dtype), embeds], dim=1)
                mask = torch.cat([mask.new_ones(b, shift), mask], dim=1)
                types = torch.cat([types.new_zeros(b, shift), types], dim=1) if typed else None
            rows["embeds"].append(pad(embeds, 0.0))
            rows["mask"].append(pad(mask, 0))
            if typed:
                rows["types"].append(pad(types, 0))
        mask = torch.cat(rows["mask"])
        kwargs = {"inputs_embeds": torch.cat(rows["embeds"]), "attention_mask": mask}
        if typed:
            kwargs["token_type_ids"] = torch.cat(rows["types"])
        if self.facts.is_decoder_only:
            kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
            kwargs["use_cache"] = False
        prompts = [prompt for _, prompt, _ in parts]
        self.install_layers(join_layer_prompts(prompts, [inputs["input_ids"].shape[0] for inputs, _, _ in parts], self))
        hidden = self.model(**kwargs).last_hidden_state
        self.release_batch_layers()
        out, row = [], 0
        for inputs, prompt, _ in parts:  # each part's text positions
            size, length = inputs["input_ids"].shape
            start = width - length if left else prompt.prepended
            out.append(hidden[row: row + size, start: start + length])
            row += size
        return out


    def hidden_states_packed(self, parts: list[tuple[dict, PromptOutput, Tensor | None]]) -> list[Tensor]:
        """``hidden_states_together`` without padding: every row (its prompt, then its real tokens) is a
        segment of a few packed rows, attention block-diagonal (``packing``), so a batch of short and long
        texts costs its real positions rather than its rows times the widest. Each part's hidden states
        come back padded as its own call pads them (zeros at padding)."""
        if any("virtual_index" in inputs for inputs, _, _ in parts):
            raise PromptsDoNotJoin("prompts placed in a template's [P:n] positions run one batch at a time")
        segments, pieces, sources = self.packed_segments(parts)
        rows, width = place(segments, ATTENTION_COST / self.facts.hidden_size)
        kwargs = self.packed_inputs(segments, pieces, rows, width)
        self.install_prefixes(packed_prefixes(segments, rows, width, sources))
        hidden = self.model(**kwargs).last_hidden_state
        self.release_batch_layers()
        out = [hidden.new_zeros(*inputs["input_ids"].shape, hidden.shape[-1]) for inputs, _, _ in parts]
        for s in segments:
            inputs, prompt, _ = parts[s.part]
            out[s.part][s.row][inputs["attention_mask"][s.row].bool()] = hidden[
                s.bin, s.start + prompt.prepended: s.start + s.length]
        return out

    def packed_segments(self, parts: list[tuple[dict, PromptOutput, Tensor | None]]) -> tuple[list, list, dict]:
        """Per row of every part: its ``Segment``, its (embeddings, token types) as it runs alone without
        padding (prompt first), and the layer prefixes the segments read, by source (a part's prompt,
        or a row's own where the prompt differs per row)."""
        typed = all("token_type_ids" in inputs for inputs, _, _ in parts)
        segments, pieces, sources = [], [], {}
        for i, (inputs, prompt, embeds) in enumerate(parts):
            embeds = embeds if embeds is not None else self.model.get_input_embeddings()(inputs["input_ids"])
            real, size = inputs["attention_mask"].bool(), embeds.shape[0]
            prepend = prompt.prepend_rows(size).to(embeds.dtype) if prompt.prepended else None
            kv = prompt.layer_kv if prompt.layer_hidden is None else self.layer_kv(prompt.layer_hidden)
            per_row = kv is not None and kv[0][0].dim() == 4
            if kv is not None and not per_row:
                sources[(i,)] = [pair[:2] for pair in kv]
            for r in range(size):
                text = embeds[r][real[r]]
                types = inputs["token_type_ids"][r][real[r]] if typed else None
                if prepend is not None:
                    text = torch.cat([prepend[r], text])
                    types = torch.cat([types.new_zeros(prompt.prepended), types]) if typed else None
                source = None if kv is None else (i, r) if per_row else (i,)
                if per_row:
                    sources[source] = [(k[r], v[r]) for k, v, *_ in kv]
                segments.append(Segment(i, r, text.shape[0], source))
                pieces.append((text, types))
        return segments, pieces, sources

    def packed_inputs(self, segments: list, pieces: list, rows: int, width: int) -> dict:
        """The model's keyword arguments for the placed segments: embeddings, the block-diagonal mask, each
        segment's own position ids (and token types)."""
        first = pieces[0][0]
        embeds = first.new_zeros(rows, width, first.shape[-1])
        positions = torch.zeros(rows, width, dtype=torch.long, device=first.device)
        typed = pieces[0][1] is not None
        types = torch.zeros(rows, width, dtype=torch.long, device=first.device) if typed else None
        start = self.packed_position_start()
        for s, (text, row_types) in zip(segments, pieces):
            where = slice(s.start, s.start + s.length)
            embeds[s.bin, where] = text
            positions[s.bin, where] = torch.arange(start, start + s.length, device=first.device)
            if typed:
                types[s.bin, where] = row_types
        mask = block_mask(segments, rows, width, self.facts.is_decoder_only, embeds.dtype, embeds.device)
        kwargs = {"inputs_embeds": embeds, "attention_mask": mask}
        if typed:
            kwargs["token_type_ids"] = types
        if self.takes_position_ids:
            kwargs["position_ids"] = positions
        if self.facts.is_decoder_only:
            kwargs["use_cache"] = False
        return kwargs

    @cached_property
    def takes_position_ids(self) -> bool:
        """Whether the model's forward numbers tokens from ``position_ids`` (T5's encoder has none: relative)."""
        return "position_ids" in inspect.signature(self.model.forward).parameters

    @property
    def packs(self) -> bool:
        """Whether ``hidden_states_packed`` can run: its block-diagonal mask needs a kernel that reads a
        dense mask (flash-attention kernels take padding only)."""
        return kernel_name(self.model) in SUPPORTED_KERNELS

    def packed_position_start(self) -> int:
        """The position id a segment's first position takes: what the model numbers an unpadded row from
        (RoBERTa-style embeddings count after the padding index)."""
        if self.facts.model_type in PACKED_AFTER_PADDING:
            return self.model.config.pad_token_id + 1
        return 0


def join_layer_prompts(prompts: list[PromptOutput], sizes: list[int], backbone: PromptedBackbone) -> PromptOutput | None:
    """One per-row layer prompt for batches of ``sizes`` rows stacked in order (None: no layer prompts).
    Hidden-state prompts of one length join as they are (each layer projects them); otherwise every
    part's prompt becomes keys and values, padded to the longest with columns its rows do not see."""
    if all(p.layer_kv is None and p.layer_hidden is None for p in prompts):
        return None
    lengths = {p.layer_prefix_length for p in prompts}
    if all(p.layer_hidden is not None for p in prompts) and len(lengths) == 1:
        hidden = torch.cat([p.layer_hidden if p.layer_hidden.dim() == 4 else p.layer_hidden.expand(n, -1, -1, -1)
                            for p, n in zip(prompts, sizes)])
        return PromptOutput(layer_hidden=hidden)
    longest, layers = max(lengths), backbone.num_layers
    f = backbone.facts
    keys, values, visible = [[] for _ in range(layers)], [[] for _ in range(layers)], []
    for p, n in zip(prompts, sizes):
        kv = p.layer_kv if p.layer_hidden is None else backbone.layer_kv(p.layer_hidden)
        length = p.layer_prefix_length
        for layer in range(layers):
            if kv is None:  # no layer prompt: columns of zeros this part's rows do not see
                pair = [torch.zeros(n, f.num_key_value_heads, longest, f.head_dim, device=visible_device(prompts))] * 2
            else:
                pair = [t if t.dim() == 4 else t.unsqueeze(0).expand(n, -1, -1, -1) for t in kv[layer]]
                pair = [torch.cat([t, t.new_zeros(n, t.shape[1], longest - length, t.shape[3])], dim=2) for t in pair]
            keys[layer].append(pair[0])
            values[layer].append(pair[1])
        shown = torch.arange(longest) < length
        visible.append(shown.expand(n, -1))
    seen = torch.cat(visible).to(visible_device(prompts))
    return PromptOutput(layer_kv=[(torch.cat(keys[layer]), torch.cat(values[layer]), seen) for layer in range(layers)])


def visible_device(prompts: list[PromptOutput]) -> torch.device:
    for p in prompts:
        for t in (p.layer_hidden, p.prepend, *(p.layer_kv[0] if p.layer_kv else ())):
            if t is not None:
                return t.device
    return torch.device("cpu")
