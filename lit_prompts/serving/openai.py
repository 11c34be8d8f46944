"""An OpenAI-compatible chat route (``POST /v1/chat/completions``) for text-to-text prompts.

``model`` names a served prompt whose ``task_format`` is ``text_to_text`` (a decoder or T5 backbone);
the last user message is its input (classification and NER: the ``text``; QA: the question, the
context coming from the system message), read through the prompt's own template as ``/predict`` reads
it. The reply is the text the prompt generates, greedily (``temperature`` and ``top_p`` are not read),
for at most ``max_completion_tokens`` / ``max_tokens`` new tokens (default: the prompt's
``max_new_tokens``); ``usage`` counts the templated input's tokens and the reply's. A classification
prompt answers in free text here (as ``predict_with: generate``), where ``/predict`` ranks its labels.

LitServe runs this API in worker processes of its own, each holding its own copy of the backbone; they
follow the shared ``state`` as the ``/predict`` workers do (``api.ServedPrompts``), so prompts loaded or
unloaded through the admin routes appear and go here too, but they load only text-to-text prompts and
report nothing back (``GET /prompts`` shows what the ``/predict`` workers hold).
"""

from __future__ import annotations

import json

import litserve as ls
import torch
from fastapi import HTTPException
from litserve.specs import OpenAISpec

from ..hub import prompt_folder
from ..peft_format import ADAPTER_CONFIG
from ..safe_reading import SETTINGS_FILE
from .api import ServedPrompts
from .endpoint import PromptEndpoint, RequestError

CHAT_FORMAT = "text_to_text"
MAX_NEW_TOKENS = 512  # the most a request may ask for (as /predict's max_new_tokens)
CONTEXT_ROLES = ("system", "developer")  # OpenAI's newer name for the system message


def declared_format(entry: dict) -> str | None:
    """The task format an entry's prompt was trained in, read from its settings file without loading it
    (an exported folder's ``prompt.json``, a PEFT adapter's task type); None where they do not say, or
    cannot be read (the prompt is then loaded, and its own settings decide)."""
    try:
        folder = prompt_folder(entry["source"], entry.get("revision"))
        if (folder / SETTINGS_FILE).is_file():
            init_args = json.loads((folder / SETTINGS_FILE).read_text(encoding="utf-8"))["init_args"]
            if isinstance(init_args.get("task_specs"), dict) and init_args["task_specs"]:  # multi-task: the first
                return next(iter(init_args["task_specs"].values())).get("task_format", "head")
            return init_args.get("task_format", "head")
        if (folder / ADAPTER_CONFIG).is_file():
            config = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
            return CHAT_FORMAT if config.get("task_type") in ("CAUSAL_LM", "SEQ_2_SEQ_LM") else "head"
    except Exception:
        return None
    return None


def text_of(content, where: str) -> str:
    """A message's content as text: a string, or the text parts of a list of content parts."""
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        parts = [p.get("text") if isinstance(p, dict) and p.get("type") == "text" else None for p in content]
        if all(isinstance(p, str) for p in parts):
            return "".join(parts)
    raise RequestError(where, "only text content is read (a string, or parts of type 'text')")


def chat_fields(task: str, messages: list[dict]) -> dict:
    """A chat request's messages (``{"role", "content"}`` dicts) as a text-to-text prompt's request
    fields: the last user message is the ``text`` (classification, NER) or the ``question`` (QA, whose
    ``context`` is the last system message)."""
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
        raise RequestError("messages", "a user message is required: its content is the prompt's input")
    content = text_of(users[-1].get("content"), "messages")
    if task != "qa":
        return {"text": content}
    context = [m for m in messages if isinstance(m, dict) and m.get("role") in CONTEXT_ROLES]
    if not context:
        raise RequestError("messages", "a qa prompt reads the question from the last user message and the context "
                                       "from a system message, which is missing")
    return {"question": content, "context": text_of(context[-1].get("content"), "messages")}


def max_new_tokens_of(context: dict, default: int) -> int:
    """``max_completion_tokens`` or ``max_tokens`` of a chat request (its other fields, as LitServe's
    ``context``), else ``default``."""
    for key in ("max_completion_tokens", "max_tokens"):
        value = context.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_NEW_TOKENS:
            raise RequestError(key, f"an integer in 1..{MAX_NEW_TOKENS} is required (got {value!r})")
        return value
    return default


@torch.no_grad()
def generate_reply(endpoint: PromptEndpoint, fields: dict, max_new_tokens: int) -> dict:
    """The text ``endpoint``'s prompt generates (greedy) for a request's fields, as a chat message with
    its token counts."""
    method = endpoint.method
    feature, _ = endpoint.encode(fields)
    source = endpoint.collate([feature])["source"]
    device = next(method.parameters()).device
    source = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in source.items()}
    text = method.prompted(method.default_task).generate_text(source, max_new_tokens, 1)[0]
    prompt_tokens = int(source["attention_mask"].sum())
    completion_tokens = len(method.tokenizer(text, add_special_tokens=False).input_ids)
    return {"role": "assistant", "content": text, "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}


class ChatAPI(ls.LitAPI):
    """``POST /v1/chat/completions`` over the served text-to-text prompts (see the module docstring);
    ``settings`` and ``state`` as for ``api.PromptServingAPI``. One request at a time."""

    def __init__(self, settings: dict, state):
        super().__init__(spec=OpenAISpec())
        self.settings, self.state = settings, state

    def setup(self, device) -> None:
        self.formats: dict[str, str | None] = {}  # name -> its declared task format
        self.prompts = ServedPrompts(self.settings, self.state, device, wanted=self.chat_capable, report=False)
        self.prompts.sync()

    def chat_capable(self, name: str, entry: dict) -> bool:
        self.formats[name] = declared_format(entry)
        return self.formats[name] in (CHAT_FORMAT, None)

    def known(self) -> str:
        names = sorted(n for n, e in self.prompts.endpoints.items() if e.task_format == CHAT_FORMAT)
        return ", ".join(names) or "none"

    def endpoint(self, name) -> PromptEndpoint:
        """The chat-capable prompt ``model`` names, or the HTTP error naming those there are."""
        entries = self.state["entries"]
        if not isinstance(name, str) or name not in entries:
            raise HTTPException(404, f"unknown model {name!r}; the chat models (text-to-text prompts): {self.known()}")
        endpoint = self.prompts.endpoints.get(name)
        if endpoint is not None and endpoint.task_format == CHAT_FORMAT:
            return endpoint
        if name in self.prompts.errors:
            raise HTTPException(503, f"prompt {name!r} is not available: {self.prompts.errors[name]}")
        fmt = endpoint.task_format if endpoint is not None else self.formats.get(name)
        raise HTTPException(422, f"prompt {name!r} is a {fmt or 'non-text-to-text'} prompt; the chat route serves "
                                 f"text-to-text prompts: {self.known()} (ask /predict for this one)")

    def predict(self, request, context):
        self.prompts.sync()
        endpoint = self.endpoint(request.model)
        try:
            fields = chat_fields(endpoint.task, [m.model_dump() for m in request.messages])
            max_new_tokens = max_new_tokens_of(context, endpoint.method.formats[endpoint.method.default_task].max_new_tokens)
            reply = generate_reply(endpoint, fields, max_new_tokens)
        except RequestError as error:
            raise HTTPException(422, str(error)) from None
        yield reply
