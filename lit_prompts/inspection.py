"""What a soft prompt learned: plain, JSON-ready summaries of a trained method's folded prompt.

- input-level prompts ([P, H]: prompt tuning, P-tuning, pool entries, MPT prompts): per virtual
  token its L2 norm, the norm's ratio to the input embedding table's median row norm, and the k
  vocabulary tokens nearest by cosine;
- deep prompts (P-tuning v2 [L, P, H], layer pools): the mean token norm per layer (and layer 0's
  nearest tokens); prefixes [L, 2, H_kv, P, d]: the mean key and value norm per layer;
- drift from the initialisation, ||now - initial|| / ||initial|| per tensor, when the method knows its
  initial values (``initial_prompt``: recorded as fit starts, kept in checkpoints);
- the cosine similarity of several prompts of the same shape.

``PromptInspection`` logs the summary's scalars at each validation during fit and prints the table
when fit ends: ``--trainer.callbacks+=lit_prompts.inspection.PromptInspection``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from .sharding import full, unsharded_class

CHUNK = 8192  # vocabulary rows compared at once (bounds memory on large vocabularies)
INPUT_NAMES = ("prompt", "prompt_embedding", "shared_prompt")  # [P, H], or [L, P, H] per layer
LAYER_NAMES = ("deep_prompts", "shared_prompt")


class Vocabulary:
    """The frozen input embedding table (rows the tokenizer can name), its row norms and tokenizer."""

    def __init__(self, method):
        weight = full(method.backbone.model.get_input_embeddings().weight).detach()
        self.tokenizer = method.backbone.tokenizer
        self.table = weight[: min(len(self.tokenizer), weight.shape[0])]
        self.norms = torch.cat([rows.float().norm(dim=-1) for rows in self.table.split(CHUNK)])
        self.median_norm = float(self.norms.median())
        self.mean_norm = float(self.norms.mean())

    def describe(self) -> dict:
        return {"vocab_size": len(self.norms), "median_norm": self.median_norm, "mean_norm": self.mean_norm}

    def nearest(self, vectors: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """(cosines, ids) [N, k] of the k rows nearest to each of ``vectors`` [N, H]."""
        unit = F.normalize(vectors.float().to(self.table.device), dim=-1)
        values, ids = [], []
        for start in range(0, len(self.norms), CHUNK):
            rows = self.table[start:start + CHUNK].float()
            cosines = unit @ rows.T / self.norms[start:start + CHUNK].clamp(min=1e-12)
            top = cosines.topk(min(k, rows.shape[0]), dim=-1)
            values.append(top.values), ids.append(top.indices + start)
        values, ids = torch.cat(values, -1), torch.cat(ids, -1)
        top = values.topk(min(k, values.shape[-1]), dim=-1)
        return top.values.cpu(), ids.gather(-1, top.indices).cpu()

    def token_rows(self, vectors: Tensor, k: int) -> list[dict]:
        """Per vector [P, H]: index, norm, norm_ratio and its k nearest tokens."""
        norms = vectors.float().norm(dim=-1).tolist()
        cosines, ids = self.nearest(vectors, k)
        rows = []
        for index, (norm, row_cos, row_ids) in enumerate(zip(norms, cosines.tolist(), ids.tolist())):
            tokens = self.tokenizer.convert_ids_to_tokens(row_ids)
            rows.append({
                "index": index, "norm": norm, "norm_ratio": norm / self.median_norm if self.median_norm else None,
                "nearest": [{"token": t if t is not None else f"<id {i}>", "id": i, "cosine": c}
                            for t, i, c in zip(tokens, row_ids, row_cos)],
            })
        return rows


def prompt_tensors(method) -> tuple[str, dict, dict[str, Tensor]]:
    """(class path, settings, ``prompt.`` tensors) of the method's folded prompt (FSDP: a collective)."""
    prompt_class, settings, tensors = method.exported()
    return prompt_class, settings, {k: v.detach().float() for k, v in tensors.items() if k.startswith("prompt.")}


def drift(current: dict[str, Tensor], initial: dict | None) -> dict | None:
    """||now - initial|| / ||initial|| per tensor (None where the initial tensor is zero) and over all."""
    if not isinstance(initial, dict) or not initial:
        return None
    per, moved, base = {}, 0.0, 0.0
    for name, start in sorted(initial.items()):
        now = current.get(name)
        if not isinstance(start, Tensor) or now is None or tuple(now.shape) != tuple(start.shape):
            continue
        start = start.float().to(now.device)
        delta, size = float((now - start).norm()), float(start.norm())
        per[name] = delta / size if size else None
        moved, base = moved + delta**2, base + size**2
    if not per:
        return None
    return {"tensors": per, "total": math.sqrt(moved / base) if base else None}


def _input_part(name: str, vectors: Tensor, vocabulary: Vocabulary, top_k: int) -> dict:
    return {"name": name, "kind": "input", "shape": list(vectors.shape), "tokens": vocabulary.token_rows(vectors, top_k)}


def _layers_part(name: str, layers: Tensor, vocabulary: Vocabulary, top_k: int) -> dict:
    norms = layers.norm(dim=-1)  # [L, P]
    return {"name": name, "kind": "layers", "shape": list(layers.shape),
            "layers": [{"layer": i, "norm": float(n.mean()), "max_norm": float(n.max())} for i, n in enumerate(norms)],
            "layer0_tokens": vocabulary.token_rows(layers[0], top_k)}


def _prefix_part(name: str, prefix: Tensor) -> dict:
    # [L, 2, H_kv, P, d] -> per layer, key or value, the vector of each position across heads: [P, H_kv·d].
    per_position = prefix.movedim(-2, 2).flatten(-2).norm(dim=-1)  # [L, 2, P]
    return {"name": name, "kind": "prefix", "shape": list(prefix.shape),
            "layers": [{"layer": i, "key_norm": float(kv[0].mean()), "value_norm": float(kv[1].mean())}
                       for i, kv in enumerate(per_position)]}


def _parts(settings: dict, tensors: dict[str, Tensor], vocabulary: Vocabulary, top_k: int) -> list[dict]:
    parts = []
    for name, tensor in tensors.items():
        short = name.removeprefix("prompt.")
        if short in INPUT_NAMES and tensor.dim() == 2:
            parts.append(_input_part(name, tensor, vocabulary, top_k))
        elif short in LAYER_NAMES and tensor.dim() == 3:
            parts.append(_layers_part(name, tensor, vocabulary, top_k))
        elif short == "prefix" and tensor.dim() == 5:
            parts.append(_prefix_part(name, tensor))
        elif short == "pool" and tensor.dim() in (3, 4):  # per entry: [P, H] or [L, P, H]
            entry = _input_part if tensor.dim() == 3 else _layers_part
            parts += [entry(f"{name}[{k}]", t, vocabulary, top_k) for k, t in enumerate(tensor)]
        else:
            parts.append({"name": name, "kind": "other", "shape": list(tensor.shape), "norm": float(tensor.norm())})
    if settings.get("variant") == "mpt" and "prompt.shared_prompt" in tensors:  # each task's prompt: P ⊙ u_t v_tᵀ
        shared = tensors["prompt.shared_prompt"]
        for task in settings.get("tasks", []):
            u, v = tensors.get(f"prompt.task_u.{task}"), tensors.get(f"prompt.task_v.{task}")
            if u is not None and v is not None:
                own = shared * (u @ v.T)
                parts.append((_input_part if own.dim() == 2 else _layers_part)(f"task {task}", own, vocabulary, top_k))
    return parts


def summarize(method, top_k: int = 5, source: str | None = None, vocabulary: Vocabulary | None = None) -> dict:
    """The summary of one method's prompt (see the module docstring), as plain values."""
    if top_k < 1:
        raise ValueError(f"top_k={top_k} must be at least 1")
    with torch.no_grad():
        prompt_class, settings, tensors = prompt_tensors(method)
        vocabulary = vocabulary or Vocabulary(method)
        return {
            "source": source,
            "method": unsharded_class(type(method)).__name__,
            "prompt_class": prompt_class,
            "backbone": method.fingerprint.get("name"),
            "embeddings": vocabulary.describe(),
            "tensors": {k: list(v.shape) for k, v in tensors.items()},
            "parts": _parts(settings, tensors, vocabulary, top_k),
            "drift": drift(tensors, getattr(method, "initial_prompt", None)),
        }


def similarity(methods: list, names: list[str]) -> dict:
    """Cosine similarity of the methods' prompts, each flattened (all ``prompt.`` tensors in name order):
    comparable only when they hold the same tensor names and shapes."""
    with torch.no_grad():
        tensors = [prompt_tensors(m)[2] for m in methods]
    layouts = [{k: tuple(v.shape) for k, v in t.items()} for t in tensors]
    if any(layout != layouts[0] for layout in layouts) or not layouts[0]:
        detail = "; ".join(f"{n}: {layout}" for n, layout in zip(names, layouts))
        return {"comparable": False, "names": names, "reason": f"the prompts differ in tensor names or shapes ({detail})"}
    flat = torch.stack([torch.cat([t[k].flatten().cpu() for k in sorted(t)]) for t in tensors])
    unit = F.normalize(flat, dim=-1)
    return {"comparable": True, "names": names, "matrix": (unit @ unit.T).tolist()}


def inspect_methods(methods: list, names: list[str], top_k: int = 5) -> dict:
    """The summary of each method and, when several are given, their cosine similarity."""
    report = {"prompts": [summarize(m, top_k, n) for m, n in zip(methods, names)]}
    if len(methods) > 1:
        report["similarity"] = similarity(methods, names)
    return report


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def scalars(summary: dict) -> dict[str, float]:
    """The summary's scalars to log: mean norm ratio and nearest cosine of input-level tokens, mean layer
    norm of deep prompts, mean key and value norms of prefixes, and the total drift."""
    parts = summary["parts"]
    rows = [r for p in parts if p["kind"] == "input" for r in p["tokens"]]
    layers = [layer for p in parts if p["kind"] == "layers" for layer in p["layers"]]
    prefix = [layer for p in parts if p["kind"] == "prefix" for layer in p["layers"]]
    values = {
        "prompt/norm": _mean([r["norm"] for r in rows]),
        "prompt/norm_ratio": _mean([r["norm_ratio"] for r in rows]),
        "prompt/nearest_cosine": _mean([r["nearest"][0]["cosine"] for r in rows]),
        "prompt/layer_norm": _mean([layer["norm"] for layer in layers]),
        "prompt/key_norm": _mean([layer["key_norm"] for layer in prefix]),
        "prompt/value_norm": _mean([layer["value_norm"] for layer in prefix]),
        "prompt/drift": (summary["drift"] or {}).get("total"),
    }
    return {k: v for k, v in values.items() if v is not None}


# --- human-readable tables -----------------------------------------------------------------------
def _token_table(rows: list[dict]) -> list[str]:
    lines = ["    tok     norm  ratio  nearest tokens (cosine)"]
    for r in rows:
        nearest = ", ".join(f"{n['token']} {n['cosine']:.3f}" for n in r["nearest"])
        ratio = f"{r['norm_ratio']:6.2f}" if r["norm_ratio"] is not None else "     -"
        lines.append(f"  {r['index']:5d} {r['norm']:8.3f} {ratio}  {nearest}")
    return lines


def render(summary: dict) -> str:
    """A summary as compact tables."""
    e = summary["embeddings"]
    source = f"{summary['source']}: " if summary["source"] else ""
    lines = [f"== {source}{summary['method']} on {summary['backbone']} ({summary['prompt_class'].rpartition('.')[2]})",
             f"input embeddings: {e['vocab_size']} tokens, median norm {e['median_norm']:.3f}, mean norm {e['mean_norm']:.3f}"]
    for part in summary["parts"]:
        lines.append(f"{part['name']} {part['shape']}:")
        if part["kind"] == "input":
            lines += _token_table(part["tokens"])
        elif part["kind"] == "layers":
            lines.append("  layer  mean norm  max norm")
            lines += [f"  {x['layer']:5d} {x['norm']:10.3f} {x['max_norm']:9.3f}" for x in part["layers"]]
            lines.append("  layer 0, nearest tokens:")
            lines += _token_table(part["layer0_tokens"])
        elif part["kind"] == "prefix":
            lines.append("  layer  key norm  value norm")
            lines += [f"  {x['layer']:5d} {x['key_norm']:9.3f} {x['value_norm']:11.3f}" for x in part["layers"]]
        else:
            lines.append(f"  norm {part['norm']:.3f}")
    moved = summary["drift"]
    if moved is None:
        lines.append("drift from initialisation: unknown (recorded in checkpoints of lit_prompts fits, not in exports)")
    else:
        each = ", ".join(f"{k} {v:.4f}" if v is not None else f"{k} -" for k, v in moved["tensors"].items())
        total = f"{moved['total']:.4f}" if moved["total"] is not None else "-"
        lines.append(f"drift from initialisation: {total} ({each})")
    return "\n".join(lines)


def render_report(report: dict) -> str:
    blocks = [render(s) for s in report["prompts"]]
    sim = report.get("similarity")
    if sim and not sim["comparable"]:
        blocks.append(f"cosine similarity: not comparable: {sim['reason']}")
    elif sim:
        names = "\n".join(f"  [{i}] {n}" for i, n in enumerate(sim["names"]))
        head = "       " + "".join(f"{f'[{i}]':>8}" for i in range(len(sim["names"])))
        rows = [f"  {f'[{i}]':>5}" + "".join(f"{v:8.3f}" for v in row) for i, row in enumerate(sim["matrix"])]
        blocks.append("\n".join(["cosine similarity between prompts:", names, head, *rows]))
    return "\n\n".join(blocks)


class PromptInspection(Callback):
    """Logs the prompt's summary scalars (``prompt/norm_ratio``, ``prompt/nearest_cosine``, ``prompt/drift``,
    ...) at the end of each validation during fit, and prints the nearest-token table when fit ends.

    Args:
        top_k: nearest vocabulary tokens per virtual token in the final table.
    """

    def __init__(self, top_k: int = 5):
        if top_k < 1:
            raise ValueError(f"PromptInspection: top_k={top_k} must be at least 1")
        self.top_k = top_k
        self._vocabulary: tuple[int, Vocabulary] | None = None  # the frozen table, read (FSDP: gathered) once

    def vocabulary(self, pl_module) -> Vocabulary:
        if self._vocabulary is None or self._vocabulary[0] != id(pl_module.backbone):
            self._vocabulary = (id(pl_module.backbone), Vocabulary(pl_module))
        return self._vocabulary[1]

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        # Every rank computes (exporting under FSDP is a collective); the values agree across ranks.
        summary = summarize(pl_module, 1, vocabulary=self.vocabulary(pl_module))
        for name, value in scalars(summary).items():
            pl_module.log(name, value, on_step=False, on_epoch=True)

    def on_fit_end(self, trainer, pl_module) -> None:
        summary = summarize(pl_module, self.top_k, vocabulary=self.vocabulary(pl_module))
        rank_zero_info(render(summary))
