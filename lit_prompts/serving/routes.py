"""HTTP routes beside LitServe's ``/predict``: the prompts served, and loading or unloading one while
the server runs (behind an admin token). They run in LitServe's HTTP processes and act through the
shared ``state`` dict (see ``api``); a worker loads or drops the prompt before its next batch."""

from __future__ import annotations

import hmac
import os

from fastapi import FastAPI, Header, HTTPException
from pydantic import BaseModel

from ..hub import prompt_folder
from ..peft_format import ADAPTER_CONFIG, read_adapter
from ..safe_reading import SETTINGS_FILE, read_prompt_folder
from ..training.checkpointing import check_fingerprint


class PromptEntry(BaseModel):
    """A prompt to serve: ``source`` an exported folder, PEFT adapter folder or Hub repo id."""

    name: str
    source: str
    revision: str | None = None
    data: dict | None = None  # data settings it was trained with (template, max_length...)


def entry_of(name: str, value) -> dict:
    """A config's ``prompts`` value (a source, or {source, revision, data}) as an entry."""
    if isinstance(value, str):
        value = {"source": value}
    if not isinstance(value, dict) or not isinstance(value.get("source"), str):
        raise ValueError(f"prompts.{name}: give the prompt's source (a folder, PEFT adapter or Hub repo id), "
                         "or {source: ..., revision: ..., data: {...}}")
    unknown = set(value) - {"source", "revision", "data"}
    if unknown:
        raise ValueError(f"prompts.{name}: unknown keys {sorted(unknown)} (source, revision, data)")
    return {"source": value["source"], "revision": value.get("revision"), "data": value.get("data")}


def check_fits(entry: dict, served: dict | None) -> None:
    """A prompt trained on another backbone is refused before any worker loads it (``served``: the
    fingerprint of the backbone the workers run, once they have reported it)."""
    folder = prompt_folder(entry["source"], entry.get("revision"))
    source = f"prompt {entry['source']}"
    if (folder / SETTINGS_FILE).is_file():
        settings, _ = read_prompt_folder(folder)
        if served:
            check_fingerprint(settings["backbone"], served, source)
    elif (folder / ADAPTER_CONFIG).is_file():
        config, _ = read_adapter(folder)
        if served and config["num_layers"] != served["num_layers"]:
            raise ValueError(f"{source} is a PEFT adapter for a backbone of {config['num_layers']} layers; the served "
                             f"backbone {served['name']!r} has {served['num_layers']}")
    else:
        raise FileNotFoundError(f"{source}: no exported prompt ({SETTINGS_FILE}) or PEFT adapter ({ADAPTER_CONFIG})")


def add_routes(app: FastAPI, state, token_env: str) -> None:
    """``GET /prompts``; ``POST /admin/prompts`` and ``DELETE /admin/prompts/{name}`` with the header
    ``Authorization: Bearer <token>``, the token read from the environment variable ``token_env`` (unset:
    the admin routes answer 403)."""

    def authorize(authorization: str | None) -> None:
        token = os.environ.get(token_env)
        if not token:
            raise HTTPException(403, f"admin routes are off: start the server with {token_env} set")
        given = (authorization or "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(401, "a valid admin token is required (header Authorization: Bearer <token>)")

    @app.get("/prompts")
    def prompts() -> dict:
        described, errors = dict(state["described"]), dict(state["errors"])
        listed = [described[n] for n in sorted(described)]
        loading = sorted(set(state["entries"]) - set(described) - set(errors))
        return {"prompts": listed, "loading": loading, "errors": errors}

    @app.post("/admin/prompts")
    def load_prompt(entry: PromptEntry, authorization: str | None = Header(None)) -> dict:
        authorize(authorization)
        settings = {"source": entry.source, "revision": entry.revision, "data": entry.data}
        try:
            check_fits(settings, state.get("backbone"))
        except (ValueError, OSError) as error:
            raise HTTPException(422, str(error)) from None
        entries = dict(state["entries"])
        entries[entry.name] = settings
        state["entries"], state["version"] = entries, state["version"] + 1
        return {"loaded": entry.name, "note": "workers load it before their next batch"}

    @app.delete("/admin/prompts/{name}")
    def unload_prompt(name: str, authorization: str | None = Header(None)) -> dict:
        authorize(authorization)
        entries = dict(state["entries"])
        if name not in entries:
            raise HTTPException(404, f"no prompt {name!r}; served: {', '.join(sorted(entries)) or 'none'}")
        del entries[name]
        state["entries"], state["version"] = entries, state["version"] + 1
        return {"unloaded": name}
