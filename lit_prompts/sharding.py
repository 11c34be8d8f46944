"""Sharding the frozen backbone with FSDP (PyTorch's ``fully_shard``), run by Lightning.

``ShardedPromptStrategy`` is Lightning's ``ModelParallelStrategy`` used as pure data parallelism
(every process one shard of the frozen weights, one slice of each batch), which works on GPUs with
NCCL and on CPUs with gloo. ``PromptMethod.configure_model`` calls ``shard_method`` under it:

- every transformer block is its own FSDP unit (the classes transformers names in
  ``_no_split_modules``), and so are the input embeddings (prompts read them outside the model's
  forward), the bare model, and the model as a whole: no unit holds a trainable tensor;
- the method itself is the root unit: prompts and task heads, which every step enters through
  ``PromptMethod.forward``;
- frozen weights that two modules share (tied input and output embeddings) are untied first, since
  one tensor cannot live in two units; each copy is then sharded.

Loading: with ``load_on_rank_zero`` active (the CLI turns it on for this strategy) only global rank 0
reads the backbone's weights; the other processes build it on the meta device, and
``shard_method`` sends rank 0's tensors to every shard. The full model is then held once, by rank 0,
and only until it is sharded. Checkpoints hold the prompt side only, gathered without the frozen
weights.
"""

from __future__ import annotations

import os
from contextvars import ContextVar

import torch
import torch.distributed as dist
from lightning.pytorch.strategies import ModelParallelStrategy, StrategyRegistry
from torch import nn
from torch.optim import Optimizer

from .contexts import holding
from .safe_reading import read_checkpoint

_RANK_ZERO_LOADS: ContextVar[bool] = ContextVar("lit_prompts_rank_zero_loads", default=False)


def load_on_rank_zero(active: bool = True):
    """Methods built inside the block read backbone weights on global rank 0 only (see module doc)."""
    return holding(_RANK_ZERO_LOADS, active)


def builds_on_meta() -> bool:
    """Whether this process should build the backbone without weights: rank-0 loading is on and this is
    not global rank 0 (torchrun's RANK, SLURM's SLURM_PROCID, else Lightning's NODE_RANK/LOCAL_RANK)."""
    if not _RANK_ZERO_LOADS.get():
        return False
    for variable in ("RANK", "SLURM_PROCID"):
        if variable in os.environ:
            return int(os.environ[variable]) != 0
    return int(os.environ.get("NODE_RANK", 0)) != 0 or int(os.environ.get("LOCAL_RANK", 0)) != 0


class ShardedPromptStrategy(ModelParallelStrategy):
    """FSDP over all processes for prompt methods: the frozen backbone sharded block by block, the
    prompt side in the root unit, prompt-only checkpoints (one file; frozen weights never gathered).

    Args:
        process_group_backend: ``nccl`` on GPUs, ``gloo`` on CPUs (default: chosen by device).
    """

    def __init__(self, process_group_backend: str | None = None):
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1, save_distributed_checkpoint=False,
                         process_group_backend=process_group_backend)

    def setup_environment(self) -> None:
        # Pure data parallelism: one mesh dimension over every process of every node.
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    def lightning_module_state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors a checkpoint keeps (``trainable_names``: the trainable ones, and any frozen tensor a method
        needs with them), whole (gathered from their shards on every rank)."""
        return {name: t.detach().cpu() for name, t in self.lightning_module.trainable_state_dict().items()}

    def optimizer_state(self, optimizer: Optimizer) -> dict:
        """The optimizer's own state dict with every tensor whole: the same layout an unsharded run saves
        (states by parameter index), so checkpoints move between sharded and unsharded runs."""
        state = getattr(optimizer, "optimizer", optimizer).state_dict()  # (LightningOptimizer wraps it)
        return {**state, "state": {i: {k: full(v).cpu() for k, v in s.items()} for i, s in state["state"].items()}}

    def load_checkpoint(self, checkpoint_path, weights_only: bool | None = None) -> dict:
        """Read a prompt-only checkpoint (refusing code, checking every trainable tensor is there) and put
        its tensors and optimizer states into this process's shards."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        checkpoint = read_checkpoint(checkpoint_path)
        saved_names = set(checkpoint["state_dict"])
        self.lightning_module.check_tensors(checkpoint)
        if set(checkpoint["state_dict"]) != saved_names:  # renamed: saved by lit_prompts 0.1
            raise ValueError(f"checkpoint {checkpoint_path} was saved by lit_prompts 0.1: resume it once without "
                             f"the {STRATEGY_NAME} strategy, then go on sharded from the checkpoint that run saves")
        set_model_state_dict(self.lightning_module, checkpoint.pop("state_dict"),
                             options=StateDictOptions(full_state_dict=True, strict=False))
        for optimizer, state in zip(self.optimizers, checkpoint.pop("optimizer_states", [])):
            optimizer.load_state_dict(sharded_like(optimizer, state))
        return checkpoint

    def load_model_state_dict(self, checkpoint, strict: bool = True) -> None:
        pass  # loaded by load_checkpoint

    def load_optimizer_state_dict(self, checkpoint) -> None:
        pass  # loaded by load_checkpoint


def sharded_like(optimizer: Optimizer, state: dict) -> dict:
    """A whole optimizer state dict with each parameter-shaped tensor cut like its (sharded) parameter."""
    from torch.distributed.tensor import distribute_tensor

    params = [p for group in optimizer.param_groups for p in group["params"]]
    out = {}
    for index, values in state["state"].items():
        param = params[int(index)]
        out[index] = {k: distribute_tensor(v.to(param.dtype), param.device_mesh, param.placements)
                      if hasattr(param, "device_mesh") and v.shape == param.shape else v for k, v in values.items()}
    return {**state, "state": out}


STRATEGY_NAME = "prompt_fsdp"  # trainer.strategy: prompt_fsdp
StrategyRegistry.register(STRATEGY_NAME, ShardedPromptStrategy, description="FSDP of the frozen backbone for prompt methods")


def full(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor's full value: gathered from every shard of an FSDP parameter (a collective: every rank
    must call it), itself otherwise."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def unsharded_class(cls: type) -> type:
    """The class a module had before ``fully_shard`` made it an ``FSDP<Name>(FSDPModule, Name)``."""
    from torch.distributed.fsdp import FSDPModule

    while issubclass(cls, FSDPModule) and cls.__name__ == f"FSDP{cls.__bases__[-1].__name__}":
        cls = cls.__bases__[-1]
    return cls


def is_sharded(module: nn.Module) -> bool:
    return any(hasattr(p, "full_tensor") for p in module.parameters())


def shard_method(method: nn.Module, backbone, mesh) -> None:
    """Apply FSDP to a prompt method over its ``PromptedBackbone`` (see the module doc); materialise
    and fill the shards of processes that built the backbone on the meta device from global rank 0's
    tensors, and give them rank 0's backbone fingerprint (its weights digest)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.fsdp import fully_shard

    backbone_model = backbone.model
    untie_frozen_weights(backbone_model)
    on_meta = not backbone.holds_weights
    if dist.get_rank() == 0:
        if not backbone.holds_weights:
            raise RuntimeError("global rank 0 holds no backbone weights to send to the other processes")
        whole = method.state_dict()  # references, not copies
    else:
        whole = {}
    blocks = set(getattr(backbone_model, "_no_split_modules", None) or ())
    for module in backbone_model.modules():
        if type(module).__name__ in blocks:
            fully_shard(module, mesh=mesh)
    fully_shard(backbone_model.get_input_embeddings(), mesh=mesh)
    if backbone_model.base_model is not backbone_model:
        fully_shard(backbone_model.base_model, mesh=mesh)
    fully_shard(backbone_model, mesh=mesh)
    # The root too is resharded after each forward (FSDP keeps a root gathered by default, for its
    # backward): evaluation has no backward, and state dicts must find the sharded tensors.
    fully_shard(method, mesh=mesh, reshard_after_forward=True)
    if on_meta:
        device = torch.device("cpu") if mesh.device_type == "cpu" else torch.device(mesh.device_type, torch.cuda.current_device())
        method.to_empty(device=device)
    # Every process gets rank 0's values, prompts included (their initialisation drew from the
    # vocabulary rank 0 alone has read); buffers are not sharded and go as they are.
    set_model_state_dict(method, whole, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    for buffer in method.buffers():
        dist.broadcast(buffer, src=0)
    del whole
    fingerprint = [backbone.fingerprint]
    dist.broadcast_object_list(fingerprint, src=0)
    backbone.fingerprint = fingerprint[0]


def untie_frozen_weights(model: nn.Module) -> None:
    """Give every module its own copy of a frozen parameter it shares with another (FSDP cannot put one
    tensor in two units). Values and results are unchanged; memory grows by the copies' shards."""
    seen: dict[int, str] = {}
    for module_name, module in model.named_modules():
        for name, parameter in list(module.named_parameters(recurse=False)):
            if parameter.requires_grad:
                continue
            if id(parameter) in seen:
                setattr(module, name, nn.Parameter(parameter.detach().clone(), requires_grad=False))
            else:
                seen[id(parameter)] = f"{module_name}.{name}"
