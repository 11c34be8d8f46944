"""Tear down a ``torch.distributed`` process group before the interpreter exits."""

from __future__ import annotations

import atexit

import torch.distributed as dist


def destroy_process_group_if_any() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def destroy_process_group_at_exit() -> None:
    """Lightning destroys an NCCL process group at exit, not a Gloo one (CPU DDP: ``ddp_spawn``,
    ``ddp`` under torchrun or SLURM). A Gloo group left to interpreter shutdown sometimes aborts its
    process ("terminate called without an active exception", SIGABRT) after fit has finished: in
    a loop of two-process ``ddp_spawn`` runs, about one in five. Registered once, at import, so that
    every process that runs lit_prompts code (spawned workers unpickle it) gets it."""
    atexit.register(destroy_process_group_if_any)
