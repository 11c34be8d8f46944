"""The methods as the CLI and ``lit_prompts.load`` know them: each a ``PromptMethod`` that declares
its settings and builds its prompt module (``lit_prompts.methods``) against the loaded backbone."""

from __future__ import annotations

from typing import Literal

import torch
from jsonargparse.typing import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

from ..contexts import is_restoring
from ..methods import DeepPrompt, EncodedPrompt, MultiTaskPrompt, PoolPrompt, Prefix, SoftPrompt
from ..methods.multitask import Variant
from ..methods.p_tuning import Encoder
from ..methods.prompt_pool import Placement, Query, Selection
from .initial_prompts import (
    default_init_text,
    initial_prefix,
    initial_prompt,
    prompt_from_folder,
    word_hidden_prompts,
    word_prefix,
)
from .module import PromptMethod

# Input-level prompts (prompt tuning, P-tuning, the pool at the input) on NER: the tag of every token, or the
# entity list a decoder generates, is steered through the first layer alone. On both CoNLL sets in token format 100
# positions reached 2.0-3.0 F1 more than 20 (the pool 6.6), and on generated CoNLL-2003 (SmolLM2, 2 seeds) 8.1 more
# for prompt tuning (docs/results.md, "Input-level prompts: length by task" and "Generated NER at 100 input
# positions"), as the P-tuning v2 paper found longer prompts better on hard sequence tasks. On SST-2 50 and 100
# gained nothing over 20, at 2-3x the step time.
INPUT_PROMPT_LENGTH = 20
INPUT_PROMPT_LENGTH_BY_FORMAT = {("ner", "token"): 100, ("ner", "text_to_text"): 100}


def input_prompt_length(specs) -> int:
    """The default length of an input-level prompt for these tasks (``task_specs`` values, or
    {task, task_format} dicts): the longest any of them asks for."""
    return max(INPUT_PROMPT_LENGTH_BY_FORMAT.get((s["task"], s["task_format"]), INPUT_PROMPT_LENGTH) for s in specs)


class PromptTuning(PromptMethod):
    """Prompt tuning: ``num_virtual_tokens`` trained vectors in front of every input.

    Args:
        num_virtual_tokens: prompt length P. Default: by task (``input_prompt_length``), 100 for NER (token
            or text-to-text format) and 20 otherwise.
        init: ``random`` (normal, std of the embedding table), ``vocab`` (embeddings of random
            vocabulary tokens), ``text`` (embeddings of ``init_text``, repeated to length P) or
            ``labels`` (embeddings of the label names, repeated to length P), as in Lester et al.
        init_text: the text for ``init: text``.
        **kwargs: see ``PromptMethod``.
    """

    default_lr = 3e-2

    def __init__(self, num_virtual_tokens: PositiveInt | None = None,
                 init: Literal["random", "vocab", "text", "labels"] = "vocab", init_text: str | None = None, **kwargs):
        super().__init__(**kwargs)
        if num_virtual_tokens is None:  # (saved settings hold the length chosen, as the task's rule gave it)
            num_virtual_tokens = self.record_choice("num_virtual_tokens", input_prompt_length(self.task_specs().values()))
        start = initial_prompt(self.backbone, num_virtual_tokens, init, init_text, self.hparams.label_names)
        self.prompt = SoftPrompt(num_virtual_tokens, self.facts.hidden_size, init=start)


class PTuning(PromptMethod):
    """P-tuning: a prompt encoder's vectors, placed at a template's ``[P:n]`` markers (else in front).

    Args:
        num_virtual_tokens: P; must equal the sum of the template's ``[P:n]`` markers. Default: by task, as
            ``PromptTuning``'s.
        encoder: ``mlp``, ``lstm`` or ``none`` (plain vectors). Default: ``mlp`` with the residual, ``lstm`` (the
            paper's) without. With the residual on SST-2 (3 seeds) the MLP gave 0.8062 ± 0.0040 against the LSTM's
            0.8008 ± 0.0195, and on the sparse and full CoNLL sets (seed 0) 0.8067 and 0.7420 F1 against 0.7908 and
            0.7491 (docs/results.md, "The head's pooling").
        encoder_hidden_size: the MLP's hidden width (default: the backbone's hidden size).
        residual: the vectors are embedding + encoder(embedding), the encoder's last layer starting at zero, so
            training starts from vocabulary tokens' embeddings as prompt tuning does (Residual Prompt Tuning).
            Without it (the paper's form, ``residual: false``) the encoder's output replaces them, and at the
            defaults P-tuning ended 6-13 points behind prompt tuning on SST-2 and SQuAD (docs/results.md,
            "Defaults that learn").
        encoder_lr_scale: the encoder's learning rate as a multiple of the optimizer's (the prompt embedding and
            heads train at the optimizer's). Default: ``ENCODER_LR_SCALE`` with the residual, 1 without. An AdamW
            step moves each weight by about the learning rate, and the encoder's output sums such moves over its
            hidden width: at scale 1 the residual encoder's first steps moved the vectors 3 to 270 times their
            norm, against about 0.5 for prompt tuning's vectors at the same rate (docs/results.md, "P-tuning's
            encoder learning rate").
        **kwargs: see ``PromptMethod``.
    """

    default_lr = 3e-2  # as prompt tuning's: with the residual, P-tuning starts where prompt tuning does
    ENCODER_LR_SCALE = 0.03

    def __init__(self, num_virtual_tokens: PositiveInt | None = None, encoder: Encoder | None = None,
                 encoder_hidden_size: PositiveInt | None = None, residual: bool = True,
                 encoder_lr_scale: PositiveFloat | None = None, **kwargs):
        super().__init__(**kwargs)
        if num_virtual_tokens is None:  # (saved settings hold the length chosen, as the task's rule gave it)
            num_virtual_tokens = self.record_choice("num_virtual_tokens", input_prompt_length(self.task_specs().values()))
        if not residual:
            self.default_lr = 1e-2  # the sweep's best for the paper's form (3e-3 failed the NER sets)
        if encoder is None:  # (saved settings hold the encoder chosen)
            encoder = self.record_choice("encoder", "mlp" if residual else "lstm")
        if encoder_lr_scale is None:  # the paper's form keeps one rate, as swept for it
            encoder_lr_scale = self.record_choice("encoder_lr_scale", self.ENCODER_LR_SCALE if residual else 1.0)
        self.encoder_lr_scale = float(encoder_lr_scale)  # (a plain float: it reaches the optimizer's state)
        start = self.backbone.vocab_embeddings((num_virtual_tokens,))
        self.prompt = EncodedPrompt(num_virtual_tokens, self.facts.hidden_size, encoder, encoder_hidden_size, residual,
                                    init=start)

    def parameter_groups(self) -> list[dict]:
        encoder = self.prompt.encoder if self.prompt.residual_encoder is None else self.prompt.residual_encoder
        if encoder is None or self.encoder_lr_scale == 1:
            return super().parameter_groups()  # one group, as before the encoder had its own rate
        weights = list(encoder.parameters())
        in_encoder = {id(w) for w in weights}
        rest = [p for p in self.trainable_parameters() if id(p) not in in_encoder]
        return [{"params": rest}, {"params": weights, "lr_scale": self.encoder_lr_scale}]

    def parameter_groups_advice(self, saved: int, wanted: int) -> str:
        if saved == 1:
            return ("it trained the encoder at the prompt's learning rate (saved before encoder_lr_scale, or with it "
                    "at 1): resume it with --model.encoder_lr_scale=1")
        return super().parameter_groups_advice(saved, wanted)

    def upgrade_state(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        if self.hparams.residual and any(k.startswith("prompt.encoder.") for k in state):
            raise ValueError("this P-tuning checkpoint was trained with the encoder's output alone (saved before "
                             "residual: true became the default): load or resume it with residual: false "
                             "(--model.residual=false)")
        return state


class PrefixTuning(PromptMethod):
    """Prefix tuning: trained keys and values in every self-attention layer.

    Args:
        num_virtual_tokens: prefix length P.
        reparameterize: train through the MLP reparameterisation, as in Li & Liang (folded at export). The
            prefix is then the initial prefix plus the MLP's output, whose last layer starts at zero: training
            starts exactly at the initial prefix, not at an MLP output of arbitrary scale. Off by default:
            through the MLP (width 512) an AdamW step moves the prefix about 45 times as far as the plain
            tensor, and on token NER it ended at all-``O`` at every learning rate from 3e-4 up, while the
            plain prefix learned (docs/results.md, "Defaults that learn"); on SST-2 and SQuAD the MLP at 1e-3
            did well (``configs/prefix_tuning/sst2.yaml``, ``squad.yaml``). The default learning rate is
            3e-2 for the plain prefix, 1e-3 through the MLP.
        reparam_hidden_size: the MLP's hidden width.
        init: the initial prefix. ``words`` (default): Li & Liang's initialisation from the activations of
            real words, each layer's keys and values of ``init_text``'s tokens (repeated or cut to P) as the
            frozen backbone computes them on that text; they report it stabilises training and helps most
            with little data. ``vocab``: random vocabulary tokens' embeddings through each layer's key and
            value projections (the initialisation before ``words``).
        init_text: the words for ``init: words``; default a short task description naming the labels, e.g.
            ``classify the text as negative or positive`` (task-relevant words did slightly better than
            unrelated ones in the paper).
        **kwargs: see ``PromptMethod``.
    """

    default_lr = 3e-2  # the plain prefix; 1e-3 through the MLP (set in __init__)
    START = "prompt.reparam.start"  # the frozen initial prefix under the reparameterisation

    def __init__(self, num_virtual_tokens: PositiveInt = 20, reparameterize: bool = False,
                 reparam_hidden_size: PositiveInt = 512, init: Literal["words", "vocab"] = "words",
                 init_text: str | None = None, **kwargs):
        super().__init__(**kwargs)
        if reparameterize:
            self.default_lr = 1e-3
        f = self.facts
        if init == "words" and not is_restoring():  # (restoring: the saved prefix replaces any start)
            text = init_text or default_init_text(self.hparams.task, self.hparams.label_names)
            start = word_prefix(self.backbone, num_virtual_tokens, text, self.hparams.prefix_positions)
        else:
            start = initial_prefix(self.backbone, num_virtual_tokens)
        self.prompt = Prefix(self.backbone.num_layers, f.num_key_value_heads, num_virtual_tokens, f.head_dim, f.hidden_size,
                             reparam_hidden_size if reparameterize else None, init=start)

    def trainable_names(self) -> set[str]:
        # The reparameterised prefix is start + MLP(E): checkpoints keep the frozen start with the MLP (the
        # vocab initialisation is random, and ``words`` computed on other hardware or in another dtype differs).
        names = super().trainable_names()
        return names | {self.START} if self.hparams.reparameterize else names

    def upgrade_state(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        if self.hparams.reparameterize and self.START not in state and "prompt.reparam.mlp.2.weight" in state:
            # Saved before the prefix started from its initialisation: it was the MLP's output alone.
            state = {**state, self.START: torch.zeros_like(self.prompt.reparam.start)}
        return state


class PTuningV2(PromptMethod):
    """P-tuning v2: deep prompts, as hidden states, entering every self-attention layer.

    Args:
        num_virtual_tokens: prompt length P per layer.
        reparameterize: train through embedding [P, H] → MLP → [P, L·H] (folded at export).
        reparam_hidden_size: the MLP's hidden width.
        prompt_dropout: dropout on the deep prompts while training.
        init: the plain prompts' start. ``words`` (default): each layer's prompt is the hidden states that
            layer's attention receives for the words of ``init_text`` (``PrefixTuning``'s real-word start, as
            hidden states), so that at step 0 the text attends to real words' keys and values. ``vocab``: random
            vocabulary tokens' embeddings at every layer, which deep layers never see: on SmolLM2 (30 layers) they
            lifted the text-to-text SST-2 loss at step 0 from 3.1 (``words``) to 18, and that run ended at
            chance (docs/results.md, "Defaults that learn").
        init_text: the words for ``init: words``; default a short task description naming the labels.
        **kwargs: see ``PromptMethod``. The default learning rate falls with depth (``default_lr_on``): 3e-2 up
            to 6 layers, 2.7e-3 on SmolLM2's 30.
    """

    default_lr = 3e-2  # on 6 layers (MiniLM): the sweep's best on every cell (docs/results.md, "Defaults that learn")

    @classmethod
    def default_lr_on(cls, facts) -> float:
        """3e-2 × (6 / L)^1.5 for L > 6 layers. Every layer's prompt moves the output, so one step moves a deep
        backbone's further: on SmolLM2 (30 layers) 3e-2 ended at chance and 3e-3 learned (docs/results.md,
        "P-tuning v2's learning rate on SmolLM2"). The curve goes through the best rate measured on each of the
        two backbones here (6 and 30 layers); other depths are interpolated, not measured."""
        return cls.default_lr * min(1.0, (6 / facts.num_layers) ** 1.5)

    def __init__(self, num_virtual_tokens: PositiveInt = 20, reparameterize: bool = False,
                 reparam_hidden_size: PositiveInt = 512, prompt_dropout: float = 0.0,
                 init: Literal["words", "vocab"] = "words", init_text: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.default_lr = self.default_lr_on(self.facts)
        layers, hidden = self.backbone.num_layers, self.facts.hidden_size
        start = None  # through the MLP, its output is the prompt
        if not reparameterize and init == "words" and not is_restoring():  # (restoring: saved prompts replace it)
            text = init_text or default_init_text(self.hparams.task, self.hparams.label_names)
            start = word_hidden_prompts(self.backbone, num_virtual_tokens, text, self.hparams.prefix_positions)
        elif not reparameterize:
            start = self.backbone.vocab_embeddings((layers, num_virtual_tokens))
        self.prompt = DeepPrompt(layers, num_virtual_tokens, hidden, reparam_hidden_size if reparameterize else None,
                                 prompt_dropout, init=start)


def pool_lengths(positions: int, top_k: int) -> tuple[int, int]:
    """The pool's default (shared_length, prompt_length) for ``positions`` prompt positions per example
    (``input_prompt_length`` at the input): 10 shared + 2 × 5 picked for the usual 20. For more (NER's 100)
    picked prompts of 10 and the shared prompt the rest, 80 + 2 × 10: each pool entry learns only from the
    examples that pick it, the shared prompt from all of them. On sparse CoNLL (3 seeds) 80 + 2 × 10
    reached 0.7778 F1 against 0.7411 for 50 + 2 × 25 (docs/results.md, "The sparse-entity set at the final
    defaults")."""
    if positions <= INPUT_PROMPT_LENGTH:
        return 10, 5
    return max(positions - top_k * 10, 0), 10


class PromptPool(PromptMethod):
    """Prompt pool (L2P): each example picks its prompts from a pool by query-key matching.

    Args:
        pool_size: K prompts in the pool.
        prompt_length: P tokens per prompt. Default: ``pool_lengths``, 5, and 10 at the input on NER.
        top_k: hard selection: N prompts per example.
        selection: ``hard`` (top-N with the key-pull loss) or ``soft`` (attention over the pool).
        query: ``backbone`` (frozen, no-grad forward) or ``encoder`` (trained E(x)).
        placement: ``input`` (prepended to the embeddings) or ``layers`` (every self-attention layer).
        temperature: soft selection: τ.
        key_pull_weight: hard selection: λ of the key-pull loss.
        shared_length: S tokens every example gets in front of its selected prompts (DualPrompt's general
            prompt), trained on every example; 0 for L2P's pool alone. Default: ``pool_lengths``, 10 with two
            prompts of 5 picked, 20 tokens per example as the other methods' defaults (80 + 2 × 10 = 100 at the
            input on NER, as prompt tuning's 100 there).
        center_query: select by the query less the mean of the training queries (see
            ``lit_prompts.methods.prompt_pool``), kept with the prompt. Default: on for decoder-only backbones,
            whose mean hidden states share one direction that otherwise dominates every cosine with the keys
            (SmolLM2's sentences at cosine 0.81-0.89 to each other, MiniLM's at 0.21), off for the others.
        frequency_penalty: hard selection in training: β of L2P's frequency-penalised selection, score_i =
            cos(q, k_i) - β·f_i with f_i entry i's share of the picks so far relative to an even share (1 =
            even). Without it (0) the key-pull loss draws the keys picked first towards every query, and a
            few entries take most picks (2 of 10 took 80% on SST-2); with it an entry used at twice the even
            share must match 0.1 better in cosine to stay picked. Evaluation selects by plain similarity.
        **kwargs: see ``PromptMethod``.
    """

    default_lr = 1e-2

    def __init__(self, pool_size: PositiveInt = 10, prompt_length: PositiveInt | None = None, top_k: PositiveInt = 2,
                 selection: Selection = "hard", query: Query = "backbone", placement: Placement = "input",
                 temperature: PositiveFloat = 0.1, key_pull_weight: float = 0.1,
                 frequency_penalty: NonNegativeFloat = 0.1, shared_length: NonNegativeInt | None = None,
                 center_query: bool | None = None, **kwargs):
        super().__init__(**kwargs)
        # At the input as many positions per example as prompt tuning's default for the task; in every layer the usual 20.
        positions = input_prompt_length(self.task_specs().values()) if placement == "input" else INPUT_PROMPT_LENGTH
        default_shared, default_length = pool_lengths(positions, top_k)
        if prompt_length is None:  # (saved settings hold the lengths chosen)
            prompt_length = self.record_choice("prompt_length", default_length)
        if shared_length is None:
            shared_length = self.record_choice("shared_length", default_shared)
        if center_query is None:
            center_query = self.record_choice("center_query", self.facts.is_decoder_only)
        if selection == "hard" and not 1 <= top_k <= pool_size:
            raise ValueError(f"top_k={top_k} must be between 1 and pool_size={pool_size}")
        layers = self.backbone.num_layers if placement == "layers" else None
        per_layer = (layers,) if layers else ()
        start = self.backbone.vocab_embeddings((pool_size, *per_layer, prompt_length))
        shared = self.backbone.vocab_embeddings((*per_layer, shared_length)) if shared_length else None
        self.prompt = PoolPrompt(pool_size, prompt_length, self.facts.hidden_size, layers, top_k, selection, query,
                                 temperature, key_pull_weight, frequency_penalty, shared_length, center_query,
                                 init=start, shared_init=shared)

    def prompt_length(self) -> int:
        # The probe's one-token input is no training example: in evaluation mode it counts no picks.
        training = self.prompt.training
        self.prompt.eval()
        try:
            return super().prompt_length()
        finally:
            self.prompt.train(training)

    def upgrade_state(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        if self.prompt.shared is not None and "prompt.shared" not in state and "prompt.pool" in state:
            raise ValueError("this prompt-pool checkpoint has no shared prompt (saved before shared_length: 10 became "
                             "the default): load or resume it with shared_length: 0 (--model.shared_length=0)")
        if self.prompt.query_mean is not None and "prompt.query_mean" not in state and "prompt.pool" in state:
            raise ValueError("this prompt-pool checkpoint has no query mean (saved before center_query became the "
                             "default on decoders): load or resume it with center_query: false "
                             "(--model.center_query=false)")
        return state

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss = super().training_step(batch, batch_idx)
        if self.trainer.world_size > 1:
            # Every process adds the others' picks of this step: the picks behind the frequency penalty (and the
            # histogram) then count the whole batch and are the same everywhere, so every process selects by one
            # rule and rank 0's checkpoint holds them all. (DDP would otherwise overwrite every process's buffers
            # with rank 0's at each forward, as it did to the histogram.)
            # μ likewise averages every process's queries; both travel in one gather.
            pool = self.prompt
            selection, queries = pool.last_selection, pool.last_queries  # (None where this process ran no forward)
            selection = torch.zeros_like(pool.selection_weights) if selection is None else selection
            parts = [selection]
            if pool.query_mean is not None:
                parts.append(pool.query_mean.new_zeros(len(pool.query_mean) + 1) if queries is None else queries)
            pool.last_selection = pool.last_queries = None
            mine = torch.cat(parts)
            others = self.all_gather(mine).sum(0) - mine
            pool.record(others[:len(selection)])
            if pool.query_mean is not None:
                pool.record_queries(others[len(selection):])
        return loss

    def trainable_names(self) -> set[str]:
        # μ is learned from the data, not by gradient, yet the selection means nothing without it: checkpoints keep it.
        names = super().trainable_names()
        return names | {"prompt.query_mean"} if self.prompt.query_mean is not None else names

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        # Not prompt tensors, but training state: a resumed run penalises, selects and logs as the whole run.
        checkpoint["lit_prompts"]["pool"] = {"picks": self.prompt.picks.cpu().clone(),
                                             "selection_weights": self.prompt.selection_weights.cpu().clone(),
                                             "queries_seen": self.prompt.queries_seen.cpu().clone()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        saved = checkpoint.get("lit_prompts", {}).get("pool")  # (none in checkpoints from before the penalty)
        if saved:
            self.prompt.picks.copy_(saved["picks"])
            self.prompt.selection_weights.copy_(saved["selection_weights"])
            if "queries_seen" in saved:  # (from before center_query)
                self.prompt.queries_seen.copy_(saved["queries_seen"])

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        weights = self.prompt.selection_weights  # every process's selections (see training_step)
        share = weights / weights.sum().clamp(min=1e-12)
        # One value per pool entry (a histogram over the epoch), how many entries took at least 1% and the
        # largest share, so a collapse onto few prompts shows in any logger.
        self.log_dict({f"pool/selected_{k}": s for k, s in enumerate(share)}, rank_zero_only=True)
        self.log("pool/entries_used", (share >= 0.01).sum().float(), rank_zero_only=True)
        self.log("pool/max_share", share.max(), rank_zero_only=True)
        # A fit stopped in mid-epoch (max_steps) keeps its part of the epoch: its checkpoint carries it, and
        # the resumed run logs the whole epoch, as the uninterrupted run does.
        progress = self.trainer.fit_loop.epoch_loop.batch_progress
        if progress.is_last_batch or progress.current.ready >= self.trainer.num_training_batches:
            self.prompt.selection_weights.zero_()


class MultiTaskPromptTuning(PromptMethod):
    """Shared prompts for several tasks in one run (``variant``: ``mpt``, a shared prompt read through
    each task's rank-r matrix, or ``selector``, a shared pool read through each task's selector; see
    ``lit_prompts.methods.multitask``). Each task keeps its own format, head and metrics (logged under
    its name); ``val/macro`` averages the tasks' monitored metrics. A batch of task t weighs α_t L_t.

    Args:
        task_specs: task name -> {task, task_format, label_names, verbalizer_token_ids} (linked from
            the ``MultiTaskDataModule``).
        variant: ``mpt`` or ``selector``.
        num_virtual_tokens: prompt length P.
        placement: ``input`` (prepended to the embeddings) or ``layers`` (every self-attention layer).
        rank: mpt: r of the task matrices u_t v_tᵀ.
        init_prompt: mpt: folder (or Hub repo id) of an exported single-task prompt that starts P: a ``PromptTuning``
            or ``PTuning`` prompt [P, H] (placement input), a ``PTuningV2`` one [L, P, H] (layers).
        pool_size: selector: K prompts in the shared pool.
        selector_hidden_size: selector: d, the width of the query encoder E(x).
        loss_weights: task name -> α_t (default 1 for every task).
        **kwargs: see ``PromptMethod``.
    """

    default_lr = 3e-2
    # DDP: a batch of one task leaves the other tasks' tensors unused (the CLI picks the strategy).
    uses_parameters_per_task = True

    def __init__(self, task_specs: dict[str, dict] | None = None, variant: Variant = "mpt",
                 num_virtual_tokens: PositiveInt = 20, placement: Placement = "input", rank: PositiveInt = 1,
                 init_prompt: str | None = None, pool_size: PositiveInt = 8, selector_hidden_size: PositiveInt = 128,
                 loss_weights: dict[str, float] | None = None, **kwargs):
        if not task_specs:
            raise ValueError("task_specs is empty (the CLI links it from a MultiTaskDataModule)")
        unknown = set(loss_weights or {}) - set(task_specs)
        if unknown:
            raise ValueError(f"loss_weights names tasks {sorted(unknown)} that are not in {sorted(task_specs)}")
        if init_prompt and variant != "mpt":
            raise ValueError("init_prompt is for variant 'mpt'")
        super().__init__(**kwargs)
        layers = self.backbone.num_layers if placement == "layers" else None
        shape = ((layers,) if layers else ()) + (num_virtual_tokens,)
        if variant == "selector":
            shape = (pool_size, *shape)
        start = (prompt_from_folder(init_prompt, (*shape, self.facts.hidden_size), placement) if init_prompt
                 else self.backbone.vocab_embeddings(shape))
        self.prompt = MultiTaskPrompt(list(task_specs), num_virtual_tokens, self.facts.hidden_size, variant, layers, rank,
                                      pool_size, selector_hidden_size, init=start)

    def task_specs(self) -> dict[str, dict]:
        return dict(self.hparams.task_specs)

    @property
    def is_multitask(self) -> bool:
        return True

    def loss_weight(self, task: str) -> float:
        return (self.hparams.loss_weights or {}).get(task, 1.0)

    def on_fit_start(self) -> None:
        super().on_fit_start()
        # By now the strategy has wrapped the module; a DDP wrapper that does not look for unused
        # parameters would wait forever for the gradients of the tasks a batch does not hold.
        wrapper = self.trainer.strategy.model
        if isinstance(wrapper, DistributedDataParallel) and not wrapper.find_unused_parameters:
            raise ValueError(
                "MultiTaskPromptTuning trains per-task tensors that a batch of another task leaves unused: use "
                "trainer.strategy 'ddp_find_unused_parameters_true' (the CLI picks it for strategy 'ddp')"
            )


class FullFineTuning(PromptMethod):
    """Full fine-tuning, the reference every prompt method is measured against: the same heads,
    formats, data and loop, with every backbone weight trained and no prompt (so its checkpoints and
    export hold the whole backbone). Backbone dropout is on by default, as fine-tuning does.

    Args:
        **kwargs: see ``PromptMethod``.
    """

    default_lr = 2e-5

    def __init__(self, backbone_dropout: bool = True, **kwargs):
        super().__init__(backbone_dropout=backbone_dropout, **kwargs)
        self.backbone.model.requires_grad_(True)

