"""Tear down a ``torch.distributed`` process group before the interpreter exits."""

from __future__ import annotations

import atexit
import gc
import os
import sys

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


def uses_gloo() -> bool:
    return dist.is_available() and dist.is_initialized() and "gloo" in str(dist.get_backend())


def end_process() -> None:
    """End a ``python -m lit_prompts`` process whose command has finished.

    Destroying a Gloo group does not stop its worker threads while anything still holds the group,
    and after a sharded fit something outside Python's garbage collector does: past ``fit``, the
    destroy and ``gc.collect()``, the FSDP-wrapped model and its group are alive though no module
    reaches them. Those threads then outlive the interpreter's finalisation, and one that touches a
    Python object there is killed mid-C++ frame, which aborts the whole finished process (SIGABRT,
    "terminate called without an active exception").
    So a process that ran Gloo runs its exit handlers, flushes its output and leaves without
    finalising: nothing is left to lose there (every file the run writes is closed by then), and
    SLURM, torchrun and scripts see the run's true exit status. Other processes exit as usual."""
    gloo = uses_gloo()
    destroy_process_group_if_any()
    if not gloo:
        return
    gc.collect()  # closes what only a reference cycle still held open
    # The atexit module has no public call that runs the registered handlers without finalising;
    # this one runs exactly the handlers shutdown would.
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
