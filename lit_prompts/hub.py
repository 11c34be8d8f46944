"""Prompts on the Hugging Face Hub: a prompt named by a repo id (``org/name``, optionally
``org/name@revision``) is fetched through ``huggingface_hub`` into its cache and read from there; an
exported folder is pushed to a repo with a model card (``README.md``) that says what it is.

``huggingface_hub`` reads ``HF_HUB_OFFLINE`` and the cache location (``HF_HUB_CACHE``, ``HF_HOME``) once,
when it is imported (``huggingface_hub.constants``), and reads those module attributes at every call.
So the cache must be chosen before Python starts (or by setting ``huggingface_hub.constants.HF_HUB_CACHE``,
which transformers reads too), while the offline flag is checked here again at call time: set late (a
notebook cell, a test), it still keeps lit_prompts off the network.
"""

from __future__ import annotations

import os
import re
from math import prod
from pathlib import Path

from .backbone import looks_like_path
from .safe_reading import SETTINGS_FILE, read_json_object, read_prompt_folder

ADAPTER_CONFIG = "adapter_config.json"  # PEFT's, written beside prompt.json by a PEFT-format export
CARD_FILE = "README.md"
# The files a shared prompt may consist of: lit_prompts' own export, a PEFT adapter, its model card.
PROMPT_PATTERNS = ["prompt.json", "prompt.safetensors", ADAPTER_CONFIG, "adapter_model.safetensors", CARD_FILE]
# A prompt is derived from its backbone, whose license lit_prompts cannot know: "other" (the Hub's value for
# "see the card") rather than a guess, with a line in the card saying the backbone's terms apply.
DEFAULT_LICENSE = "other"
LIBRARY_NAME = "lit-prompts"
_TRUE = {"1", "ON", "YES", "TRUE"}  # huggingface_hub's own reading of a boolean variable


class HubError(OSError):
    """A Hub operation failed; the message names the repo and what to do. (An ``OSError``: the command
    line reports it in one line, as it does a missing file.)"""


def split_revision(name: str) -> tuple[str, str | None]:
    """``org/name@v1`` -> (``org/name``, ``v1``); a name without ``@`` has no revision."""
    repo, at, revision = name.partition("@")
    return (repo, revision) if at and revision else (name, None)


def is_repo_id(name: str) -> bool:
    """``org/name`` (one slash, not a path that exists here)."""
    repo, _ = split_revision(name)
    return repo.count("/") == 1 and not looks_like_path(repo) and not Path(name).exists()


def offline() -> bool:
    """Whether the Hub must not be contacted: ``huggingface_hub``'s flag (fixed at its import) or the
    environment as it is now (see the module docstring)."""
    from huggingface_hub import constants

    flags = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    return constants.is_offline_mode() or any((flag or "").upper() in _TRUE for flag in flags)


# --- pull -----------------------------------------------------------------------------------------------


def prompt_folder(name: str | Path, revision: str | None = None) -> Path:
    """A local folder holding the prompt ``name`` names: the folder (or file) itself when it exists here,
    else the snapshot of Hub repo ``name`` at ``revision`` (the cache's copy when offline). Only the
    prompt's files are downloaded (``PROMPT_PATTERNS``), never a model that shares the repo."""
    if isinstance(name, Path) or not is_repo_id(name):
        return Path(name)
    repo, pinned = split_revision(name)
    if revision and pinned and revision != pinned:
        raise ValueError(f"prompt {name!r} names revision {pinned!r}, and revision={revision!r} was passed too: give one")
    revision = revision or pinned
    folder = _download(repo, revision)
    if not any((folder / f).is_file() for f in (SETTINGS_FILE, ADAPTER_CONFIG)):
        raise FileNotFoundError(f"Hub repo {_where(repo, revision)} holds no prompt ({SETTINGS_FILE} or {ADAPTER_CONFIG}): "
                                "is it a prompt exported by lit_prompts, or a model?")
    return folder


def _where(repo: str, revision: str | None) -> str:
    return f"{repo!r}" + (f" at revision {revision!r}" if revision else "")


def _download(repo: str, revision: str | None) -> Path:
    """The snapshot folder of ``repo`` at ``revision``; each way of failing becomes a FileNotFoundError
    that names the repo (and revision) and what to do."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        IncompleteSnapshotError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where, no_network = _where(repo, revision), offline()
    try:
        return Path(snapshot_download(repo, revision=revision, allow_patterns=PROMPT_PATTERNS,
                                      local_files_only=no_network))
    except HFValidationError as error:
        raise FileNotFoundError(f"prompt {repo!r} is neither a local folder nor a valid Hub repo id ({error})") from None
    except RevisionNotFoundError:
        raise FileNotFoundError(f"prompt {where}: the Hub repo has no such revision (a branch, tag or commit)") from None
    except GatedRepoError:
        raise FileNotFoundError(f"prompt {where} is a gated Hub repo: accept its conditions on the Hub and log in "
                                "with `hf auth login`") from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(f"prompt {where} is neither a local folder nor a Hub repo (or it is private: log in "
                                "with `hf auth login`)") from None
    except IncompleteSnapshotError:
        raise FileNotFoundError(f"prompt {where}: its copy in the Hugging Face cache is incomplete and the Hub cannot "
                                "be reached; download it again with network access") from None
    except LocalEntryNotFoundError:
        reason = "HF_HUB_OFFLINE is set: only the cache is searched" if no_network else "the Hub cannot be reached"
        cached = cached_revisions(repo)
        found = (f"the cache holds it only at {', '.join(cached)}" if cached
                 else f"it is neither a local folder nor in the Hugging Face cache ({constants.HF_HUB_CACHE})")
        raise FileNotFoundError(f"prompt {where}: {found}, and {reason}") from None


def cached_revisions(repo: str) -> list[str]:
    """The branches and tags (else short commits) under which the local cache holds ``repo``, for error
    messages; empty when it holds none or cannot be read."""
    from huggingface_hub import scan_cache_dir

    try:
        info = scan_cache_dir()
    except Exception:  # no cache folder yet (CacheNotFound), or unreadable: nothing to list
        return []
    names: list[str] = []
    for cached in info.repos:
        if cached.repo_id == repo and cached.repo_type == "model":
            for rev in sorted(cached.revisions, key=lambda r: r.commit_hash):
                names += sorted(rev.refs) or [rev.commit_hash[:12]]
    return names


# --- model card -----------------------------------------------------------------------------------------

_AUTO_CLASSES = {  # PEFT task type -> the transformers class its base model loads with
    "CAUSAL_LM": "AutoModelForCausalLM",
    "SEQ_2_SEQ_LM": "AutoModelForSeq2SeqLM",
    "SEQ_CLS": "AutoModelForSequenceClassification",
    "TOKEN_CLS": "AutoModelForTokenClassification",
    "QUESTION_ANS": "AutoModelForQuestionAnswering",
}

CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

A **{{ method }}** prompt for the frozen backbone `{{ backbone }}` ({{ backbone_version }}), trained with
[lit_prompts](https://pypi.org/project/lit-prompts/). It holds {{ "{:,}".format(parameters) }} parameters (the prompt and
any task head); the backbone itself is not included and is loaded from its own name.

| | |
|---|---|
| method | `{{ method }}` |
| backbone | `{{ backbone }}` ({{ backbone_version }}) |
{% for task in tasks -%}
| task{% if tasks|length > 1 %} `{{ task.name }}`{% endif %} | {{ task.task }} (format `{{ task.task_format }}`){% if task.labels %}, labels: {{ task.labels|join(", ") }}{% endif %} |
{% endfor -%}
| exported parameters | {{ "{:,}".format(parameters) }} |
| {{ metric or "metric" }} | {{ value }} |

{% if command -%}
Measured by:

```bash
{{ command }}
```
{%- else -%}
How it was measured was not recorded.
{%- endif %}

## How to load

```python
import lit_prompts

method = lit_prompts.load("{{ repo }}")  # add revision="..." to pin a commit
```
{% if peft %}
The folder is also a PEFT adapter:

```python
from peft import PeftModel
from transformers import {{ peft.auto_class }}

base = {{ peft.auto_class }}.from_pretrained("{{ peft.base }}"{% if peft.revision %}, revision="{{ peft.revision }}"{% endif %})
model = PeftModel.from_pretrained(base, "{{ repo }}")
```
{% endif %}
## License

{% if license == "other" -%}
No license was chosen when this prompt was published; it was trained on `{{ backbone }}`, whose license terms apply.
{%- else -%}
`{{ license }}`; it was trained on `{{ backbone }}`, whose license terms also apply.
{%- endif %}
"""


def method_tag(name: str) -> str:
    """``PTuningV2`` -> ``p-tuning-v2``, ``MultiTaskPromptTuning`` -> ``multi-task-prompt-tuning``."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "-", name).lower()


def hub_base_model(name: str | None) -> str | None:
    """``name`` without its ``@revision`` when it is a Hub repo id (``org/name``), else None: a local
    folder, a ``pkg://`` model or a bare name (ambiguous: a folder here, or a legacy Hub alias)."""
    from huggingface_hub.utils import validate_repo_id

    if not isinstance(name, str) or name.startswith("pkg://") or looks_like_path(name):
        return None
    repo, _ = split_revision(name)
    if repo.count("/") != 1:
        return None
    try:
        validate_repo_id(repo)
    except ValueError:
        return None
    return repo


def parameter_count(settings: dict) -> int:
    """Exported parameters: the sum over ``settings["tensors"]`` of the product of each shape."""
    return sum(prod(shape) for shape in (settings.get("tensors") or {}).values())


def task_rows(init_args: dict) -> list[dict]:
    """Each task the method answers: name, task, format and label set (multi-task methods: one per task)."""
    specs = init_args.get("task_specs") or {init_args.get("task") or "task": init_args}
    return [{"name": name, "task": spec.get("task") or "classification", "task_format": spec.get("task_format") or "head",
             "labels": [str(label) for label in spec.get("label_names") or []]} for name, spec in specs.items()]


def model_card(settings: dict, license: str | None = None, peft_config: dict | None = None,
               repo_id: str | None = None) -> str:
    """The Hub model card (``README.md``: YAML metadata, then text) of an exported prompt from its
    ``prompt.json`` ``settings``: method, backbone (name, commit or weights digest), tasks and labels,
    parameter count, and the metric, value and command that measured it (``settings["training"]``).
    ``license``: the metadata's license id (default ``"other"``, see ``DEFAULT_LICENSE``);
    ``peft_config``: the folder's ``adapter_config.json``, which makes it a PEFT adapter card;
    ``repo_id``: the repo the card will live in, for the loading snippets."""
    from huggingface_hub import ModelCard, ModelCardData

    method = str(settings.get("class_path", "")).rpartition(".")[2] or "unknown"
    backbone = dict(settings.get("backbone") or {})
    init_args = settings.get("init_args") or {}
    tasks = task_rows(init_args)
    training = settings.get("training") if isinstance(settings.get("training"), dict) else {}
    metric, value, command = training.get("metric"), training.get("value"), training.get("command")
    license = license or DEFAULT_LICENSE
    repo = repo_id or "<repo id>"
    base = hub_base_model((peft_config or {}).get("base_model_name_or_path") or backbone.get("name"))
    recorded = {"metric": metric, "value": value, "command": command} if training else "not recorded"
    data = ModelCardData(
        license=license,
        library_name="peft" if peft_config else LIBRARY_NAME,
        base_model=base,
        tags=list(dict.fromkeys([LIBRARY_NAME, "prompt-tuning", method_tag(method)])),
        metrics=[metric.rpartition("/")[2]] if metric else None,
        model_name=repo_id.rpartition("/")[2] if repo_id else None,
        # What a program reading the card needs, in one block of its own (the Hub keeps unknown keys).
        lit_prompts={
            "method": method,
            "backbone": {key: backbone.get(key) for key in ("name", "commit", "weights_digest")},
            "tasks": {t["name"]: {"task": t["task"], "task_format": t["task_format"], "label_names": t["labels"]}
                      for t in tasks},
            "parameters": parameter_count(settings),
            "training": recorded,
        },
    )
    peft = None
    if peft_config:  # from_pretrained takes the revision apart from the name (``org/name@rev`` is not a repo id)
        base_name, pinned = split_revision(str(peft_config.get("base_model_name_or_path") or backbone.get("name")))
        same = base_name == split_revision(str(backbone.get("name")))[0]  # the fingerprint's commit is this model's
        peft = {"auto_class": _AUTO_CLASSES.get(str(peft_config.get("task_type")), "AutoModel"), "base": base_name,
                "revision": peft_config.get("revision") or (backbone.get("commit") if same else None) or pinned}
    card = ModelCard.from_template(
        data, template_str=CARD_TEMPLATE, title=repo_id or f"{method} prompt", method=method,
        backbone=backbone.get("name", "unknown"), backbone_version=_backbone_version(backbone),
        tasks=tasks, parameters=parameter_count(settings), metric=metric,
        value="not recorded" if value is None else (f"{value:.4g}" if isinstance(value, float) else value),
        command=command, repo=repo, peft=peft, license=license,
    )
    return str(card)


def _backbone_version(fingerprint: dict) -> str:
    if fingerprint.get("commit"):
        return f"commit `{fingerprint['commit']}`"
    if fingerprint.get("weights_digest"):
        return f"no Hub commit recorded; weights digest `{fingerprint['weights_digest']}`"
    return "version not recorded"


def write_model_card(folder: str | Path, license: str | None = None, repo_id: str | None = None) -> Path:
    """Write ``folder/README.md``, the model card of the prompt exported there (its ``prompt.json``, and
    ``adapter_config.json`` when it is also a PEFT adapter); returns its path."""
    folder = Path(folder)
    settings_path = folder / SETTINGS_FILE
    if not settings_path.is_file():
        raise FileNotFoundError(f"{folder} holds no {SETTINGS_FILE}: export a prompt there first")
    adapter = folder / ADAPTER_CONFIG
    peft_config = read_json_object(adapter) if adapter.is_file() else None
    card = folder / CARD_FILE
    card.write_text(model_card(read_json_object(settings_path), license, peft_config, repo_id), encoding="utf-8")
    return card


# --- push -----------------------------------------------------------------------------------------------


def push_prompt(folder: str | Path, repo_id: str, *, revision: str | None = None, private: bool = False,
                token: str | None = None, commit_message: str | None = None, license: str | None = None) -> str:
    """Upload the prompt exported in ``folder`` (its ``PROMPT_PATTERNS`` files only) to Hub repo
    ``repo_id``, creating the repo (``private``, else its owner's default visibility, if new) and the
    branch ``revision`` when missing, and
    writing the model card first when the folder has none. Returns the commit's URL. Every failure of
    the Hub (offline, not logged in, no write access) is a ``HubError`` naming the repo."""
    folder = Path(folder)
    read_prompt_folder(folder)  # a damaged or partial export is refused before anything is sent
    if not (folder / CARD_FILE).is_file():
        write_model_card(folder, license=license, repo_id=repo_id)
    what = f"cannot push {folder} to Hub repo {repo_id!r}"
    if offline():
        raise HubError(f"{what}: HF_HUB_OFFLINE is set (unset it, with network access, to push)")
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        # private=None: a new repo gets its owner's default visibility (an organization may default to private).
        api.create_repo(repo_id, exist_ok=True, private=private or None, token=token)
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True, token=token)
        commit = api.upload_folder(repo_id=repo_id, folder_path=folder, allow_patterns=PROMPT_PATTERNS, revision=revision,
                                   token=token, commit_message=commit_message or f"Upload prompt from {folder.name}")
    except Exception as error:  # any failure of the Hub, its HTTP client or the token is reported the same way
        raise HubError(f"{what}: {_push_problem(error)}") from error
    return str(commit.commit_url)


def _push_problem(error: Exception) -> str:
    """What went wrong in a push, and what to do about it."""
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalTokenNotFoundError, OfflineModeIsEnabled

    status = getattr(getattr(error, "response", None), "status_code", None) if isinstance(error, HfHubHTTPError) else None
    if isinstance(error, OfflineModeIsEnabled):
        return "HF_HUB_OFFLINE is set (unset it, with network access, to push)"
    if isinstance(error, HFValidationError):
        return f"not a valid repo id ({error})"
    if isinstance(error, LocalTokenNotFoundError) or status == 401:
        return "not logged in: run `hf auth login` (or pass token=/set HF_TOKEN)"
    if status == 403:
        return "the token may not write there: use a token with write access to that user or organization"
    if isinstance(error, HfHubHTTPError):
        return f"the Hub answered {status}: {error}"
    return f"the Hub cannot be reached ({type(error).__name__}: {error}); check the network"
