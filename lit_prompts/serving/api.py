"""The LitServe API: one frozen backbone, many prompts, requests for any of them batched together.

LitServe runs this class in its inference worker processes (``setup`` loads the backbone and the
prompts there) and the HTTP routes in others; the two sides share one ``multiprocessing.Manager``
dict (``state``): the prompts to serve (``entries``, with a ``version`` the admin routes bump), and
what the workers report back (the backbone's fingerprint, each prompt's description or load error).
A worker brings its prompts in line with ``entries`` before each batch.
"""

from __future__ import annotations

import litserve as ls
from fastapi import HTTPException
from fastapi.responses import JSONResponse

from ..backbone import shared_backbones
from ..loading import load
from .batching import Item, answer_batch
from .endpoint import PromptEndpoint, RequestError

OPTIONS = {"all_scores": bool, "max_new_tokens": int, "num_beams": int}


class ServedPrompts:
    """The prompts one inference worker holds, kept in line with the shared ``state``'s entries: what
    every LitAPI of the server loads its prompts with (``PromptServingAPI``, ``openai.ChatAPI``).

    ``settings``: the serve config as plain values; ``wanted(name, entry)``: whether this worker loads an
    entry at all (default: every one); ``report``: whether it writes what it loaded (descriptions, load
    errors, the backbone's fingerprint) back into ``state``, which ``GET /prompts`` and the admin routes
    read (the ``/predict`` workers do; a worker serving a subset of the prompts does not)."""

    def __init__(self, settings: dict, state, device, wanted=None, report: bool = True):
        self.settings, self.state, self.device = settings, state, device
        self.wanted, self.report = wanted, report
        self.backbones: dict = {}  # one backbone object per form, shared by every prompt (shared_backbones)
        self.endpoints: dict[str, PromptEndpoint] = {}
        self.loaded: dict[str, dict] = {}  # name -> the entry it was loaded from
        self.errors: dict[str, str] = {}  # name -> why it could not be loaded (this worker's own view)
        self.version = None

    def sync(self) -> None:
        """Load the entries added or changed since the last call, drop those removed or changed."""
        version = self.state["version"]
        if version == self.version:
            return
        entries = dict(self.state["entries"])
        if self.wanted is not None:
            entries = {n: e for n, e in entries.items() if self.wanted(n, e)}
        for name in [n for n in self.endpoints if entries.get(n) != self.loaded.get(n)]:
            del self.endpoints[name], self.loaded[name]
        self.errors = {n: e for n, e in self.errors.items() if n in entries}
        described, errors = (dict(self.state["described"]), dict(self.state["errors"])) if self.report else ({}, {})
        for name, entry in entries.items():
            if name in self.endpoints:
                continue
            try:
                self.endpoints[name] = self.load(name, entry)
                self.loaded[name] = entry
                described[name] = self.endpoints[name].describe()
                errors.pop(name, None)
                self.errors.pop(name, None)
            except Exception as error:  # a prompt that cannot be loaded is reported, the others served
                errors[name] = self.errors[name] = f"{type(error).__name__}: {error}"
                described.pop(name, None)
        if self.report:
            for name in set(described) - set(entries):
                described.pop(name)
            self.state["described"] = described
            self.state["errors"] = {n: e for n, e in errors.items() if n in entries}
            if self.endpoints:
                self.state["backbone"] = next(iter(self.endpoints.values())).method.fingerprint
        self.version = version

    def load(self, name: str, entry: dict) -> PromptEndpoint:
        overrides = {"backbone": self.settings["backbone"], "backbone_dtype": self.settings["backbone_dtype"]}
        with shared_backbones(self.backbones):
            method = load(entry["source"], revision=entry.get("revision"), **overrides)
        method = method.to(self.device).eval()
        return PromptEndpoint(name, method, entry.get("data"), source=entry["source"])


class PromptServingAPI(ls.LitAPI):
    """``settings``: the serve config as plain values (backbone, backbone_dtype...); ``state``: the
    shared dict described in the module docstring."""

    def __init__(self, settings: dict, state, **batching):
        super().__init__(**batching)
        self.settings, self.state = settings, state

    def setup(self, device) -> None:
        self.device = device
        self.prompts = ServedPrompts(self.settings, self.state, device)
        self.prompts.sync()

    # --- requests -----------------------------------------------------------------------------------------
    def decode_request(self, request: dict):
        """The request checked, or the HTTP error it earns (returned, not raised: a raised one would fail
        every request batched with it)."""
        if not isinstance(request, dict):
            return HTTPException(422, "the body must be a JSON object")
        name = request.get("prompt")
        # The prompts this worker holds answer most requests without asking the shared state (a round trip
        # to its manager process); a name it does not hold may have been added since its last batch.
        entries = self.prompts.loaded if isinstance(name, str) and name in self.prompts.loaded else self.state["entries"]
        if not isinstance(name, str) or name not in entries:
            known = ", ".join(sorted(entries)) or "none"
            return HTTPException(404 if isinstance(name, str) else 422,
                                 f"unknown prompt {name!r}; known: {known}" if isinstance(name, str)
                                 else "prompt: the name of a served prompt is required (GET /prompts lists them)")
        options = {}
        for key, kind in OPTIONS.items():
            if key in request:
                value = request[key]
                if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool) or \
                        (kind is int and not 1 <= value <= 512):
                    return HTTPException(422, f"{key}: {'true or false' if kind is bool else 'an integer in 1..512'} "
                                              f"is required (got {value!r})")
                options[key] = value
        fields = {k: v for k, v in request.items() if k != "prompt" and k not in OPTIONS}
        return {"prompt": name, "fields": fields, "options": options}

    def predict(self, requests):
        if not isinstance(requests, list):  # max_batch_size 1: LitServe hands over one request
            return self.predict([requests])[0]
        self.prompts.sync()
        answers: list = list(requests)  # decode errors pass through in place
        items, where = [], []
        for i, request in enumerate(requests):
            if isinstance(request, Exception):
                continue
            endpoint = self.prompts.endpoints.get(request["prompt"])
            if endpoint is None:
                error = self.state["errors"].get(request["prompt"], "it was unloaded")
                answers[i] = HTTPException(503 if request["prompt"] in self.state["entries"] else 404,
                                           f"prompt {request['prompt']!r} is not available: {error}")
                continue
            try:
                feature, facts = endpoint.encode(request["fields"])
            except RequestError as error:
                answers[i] = HTTPException(422, str(error))
                continue
            items.append(Item(endpoint, feature, facts, request["options"]))
            where.append(i)
        if items:
            answered, calls = answer_batch(items, self.settings.get("call_cost"), self.settings.get("packing", True))
            for i, answer in zip(where, answered):
                if isinstance(answer, Exception):
                    answers[i] = HTTPException(500, f"the prompt failed on this request: {type(answer).__name__}: {answer}")
                else:
                    answers[i] = {**answer, "served": {"batch_size": len(requests), "backbone_calls": calls}}
        return answers

    def unbatch(self, output: list) -> list:
        return output

    def batch(self, inputs: list) -> list:
        return inputs

    def encode_response(self, output):
        if isinstance(output, HTTPException):
            return JSONResponse(status_code=output.status_code, content={"detail": output.detail})
        return output
