"""Answering a batch of requests for different prompts on one frozen backbone.

Prompts whose formats read the backbone's hidden states (head, token, span) share one forward pass
with per-row prompts, input-level and deep alike, of any lengths: the rows packed end to end
(``PromptedBackbone.hidden_states_packed``), or padded where the attention kernel cannot take a packed
mask (``hidden_states_together``: one pass, or a few by width where that saves padding). The others
(cloze, text-to-text) run one call per prompt, generation one per prompt and generation settings. A
request that fails fails alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from lightning.pytorch.utilities import move_data_to_device

from ..library import joins
from ..prompted import WithHiddenStates, share_hidden_states
from .endpoint import PromptEndpoint


@dataclass
class Item:
    """One request of a batch, encoded for its prompt."""

    endpoint: PromptEndpoint
    feature: dict
    facts: dict
    options: dict


# A backbone call's fixed cost in padded positions by device kind; None (one call) where not measured.
# CPU: MiniLM's forward pass alone fits 36-46 (scripts/bench_call_cost.py, 2 cores), but a small call
# also multiplies less efficiently: on bench_serve's mixed batches of 8, answer_batch took 13.0-13.3 ms
# per request at 0, 9.2-9.8 at 40, 8.9-9.1 at 80, 9.8-10.0 at 160 and 320, 9.6-9.8 in one call.
CALL_COST = {"cpu": 80.0}


@torch.no_grad()
def answer_batch(items: list[Item], call_cost: float | str | None = None,
                 packed: bool = True) -> tuple[list[dict | Exception], int]:
    """Answers (or the exception of a request that failed) in the items' order, and the number of
    backbone calls the batch took. ``packed`` and ``call_cost``: see ``share_hidden_states`` (``auto``:
    ``CALL_COST`` of the device; it applies where rows are not packed)."""
    groups: dict[tuple, list[int]] = {}
    for i, item in enumerate(items):
        generation = (item.options.get("max_new_tokens"), item.options.get("num_beams"))
        groups.setdefault((item.endpoint.name, *generation), []).append(i)
    answers: list = [None] * len(items)
    batches = {key: on_device(items[rows[0]].endpoint.collate([items[i].feature for i in rows]),
                              items[rows[0]].endpoint.method.device) for key, rows in groups.items()}
    runs = {key: items[rows[0]].endpoint.prompted() for key, rows in groups.items()}
    shared = [key for key, rows in groups.items() if joins(items[rows[0]].endpoint.method)]
    if call_cost == "auto":
        call_cost = CALL_COST.get(items[0].endpoint.method.device.type)
    calls = share_hidden_states(runs, batches, shared, call_cost, packed)
    for key, rows in groups.items():
        endpoint = items[rows[0]].endpoint
        try:
            predicted = predict(endpoint, runs[key], batches[key], items[rows[0]].options)
            calls += 0 if isinstance(runs[key], WithHiddenStates) else 1
        except Exception as error:  # this prompt's requests fail; the other prompts' are answered
            predicted = [error] * len(rows)
        for i, row in zip(rows, predicted):
            answers[i] = row if isinstance(row, Exception) else endpoint.answer(row, items[i].facts)
    return answers, calls


def on_device(batch: dict, device: torch.device) -> dict:
    # The collator makes CPU tensors: on a CPU server, skip walking every batch's nested fields.
    return batch if device.type == "cpu" else move_data_to_device(batch, device)


def predict(endpoint: PromptEndpoint, run, batch: dict, options: dict) -> list[dict]:
    """Predict rows of one prompt's sub-batch; classification adds every label's probability on request."""
    method = endpoint.method
    form = method.formats[method.default_task]
    if endpoint.task == "classification" and getattr(form, "predict_with", "labels") == "labels":
        probabilities = form.scores(run, batch).float().softmax(-1)
        score, index = probabilities.max(-1)
        rows = [{"label": form.label_names[k], "score": round(float(s), 6)} for k, s in zip(index.tolist(), score)]
        if options.get("all_scores"):
            for row, values in zip(rows, probabilities.tolist()):
                row["scores"] = {label: round(v, 6) for label, v in zip(form.label_names, values)}
        return rows
    settings = {k: options[k] for k in ("max_new_tokens", "num_beams") if options.get(k) is not None}
    kept = {k: getattr(form, k) for k in settings}
    try:
        for k, v in settings.items():
            setattr(form, k, v)
        return form.predict(run, batch)
    finally:
        for k, v in kept.items():
            setattr(form, k, v)
