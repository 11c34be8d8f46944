"""``python -m lit_prompts serve``: prompts of every task and format behind one frozen backbone.

The unit tier checks the request layer in process (a batch mixing prompts answers as each request
alone does); the integration tier starts a real LitServe server on a free loopback port and talks
HTTP to it (a mixed concurrent burst, bad requests, hot loading)."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

import lit_prompts
from lit_prompts.backbone import shared_backbones
from lit_prompts.data import PromptDataModule
from lit_prompts.data.qa import SPAN_LABELS
from lit_prompts.methods import DeepPrompt, Prefix
from lit_prompts.methods.base import PromptOutput
from lit_prompts.prompted import width_groups
from lit_prompts.serving.batching import Item, answer_batch
from lit_prompts.serving.endpoint import PromptEndpoint, RequestError

LABELS = ["negative", "positive"]
TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
CLOZE = {"template": "{text} It was {mask} .", "verbalizer": {"negative": "bad", "positive": "great"}}
REQUESTS = {
    "sentiment": {"text": "the movie was really good"},
    "sentiment_b": {"text": "an awful , boring plot"},
    "deep": {"text": "the acting was fine"},
    "entities": {"text": "john  smith visited paris"},
    "answers": {"question": "who visited paris ?", "context": "john smith visited paris today and left ."},
    "cloze": {"text": "the story was dull"},
}


def randomized(method):
    torch.manual_seed(0)
    with torch.no_grad():  # trained-looking prompts and heads, so that rows differ
        for parameter in method.parameters():
            if parameter.requires_grad:
                parameter.normal_(0, 0.5)
    return method


@pytest.fixture(scope="module")
def exported(tiny_backbone, tmp_path_factory) -> dict:
    """name -> (serving entry) for prompts of every bert format, exported."""
    bert, folder = tiny_backbone("bert"), tmp_path_factory.mktemp("served")
    cloze_ids = PromptDataModule(backbone=bert, task_format="cloze", label_names=LABELS, **CLOZE).verbalizer_token_ids
    methods = {
        "sentiment": lit_prompts.PromptTuning(backbone=bert, label_names=LABELS, num_virtual_tokens=4),
        "sentiment_b": lit_prompts.PromptTuning(backbone=bert, label_names=LABELS, num_virtual_tokens=4),
        "deep": lit_prompts.PTuningV2(backbone=bert, label_names=LABELS, num_virtual_tokens=4),
        "entities": lit_prompts.PromptTuning(backbone=bert, task="ner", task_format="token", label_names=TAGS,
                                             num_virtual_tokens=4),
        "answers": lit_prompts.PromptTuning(backbone=bert, task="qa", task_format="span", label_names=SPAN_LABELS,
                                            num_virtual_tokens=4),
        "cloze": lit_prompts.PromptTuning(backbone=bert, task_format="cloze", label_names=LABELS,
                                          verbalizer_token_ids=cloze_ids, num_virtual_tokens=4),
    }
    entries = {}
    for name, method in methods.items():
        randomized(method).export_prompt(folder / name)
        data = {"cloze": dict(CLOZE), "answers": {"max_length": 64, "stride": 16}}.get(name)
        entries[name] = {"source": str(folder / name), "data": data}
    return {"backbone": bert, "entries": entries}


def endpoints(exported) -> dict[str, PromptEndpoint]:
    with shared_backbones():
        return {name: PromptEndpoint(name, lit_prompts.load(e["source"], backbone=exported["backbone"]), e["data"])
                for name, e in exported["entries"].items()}


def ask(endpoint: PromptEndpoint, fields: dict, **options) -> Item:
    return Item(endpoint, *endpoint.encode(fields), options)


def test_a_mixed_batch_answers_as_each_request_alone(exported):
    served = endpoints(exported)
    alone = {name: answer_batch([ask(served[name], fields)])[0][0] for name, fields in REQUESTS.items()}
    mixed, calls = answer_batch([ask(served[name], fields) for name, fields in REQUESTS.items()])
    for (name, expected), got in zip(alone.items(), mixed):
        assert got.keys() == expected.keys(), name
        for key, value in expected.items():
            if key == "score" and value is not None:
                assert got[key] == pytest.approx(value, abs=1e-5), name
            elif key != "score":
                assert got[key] == value, (name, key)
    # Every format that reads hidden states (head, token, span: input-level and deep prompts) shares one
    # backbone call, the rows packed end to end; cloze reads the masked-LM form and runs its own.
    assert calls == 2
    # Padded rows instead, and free calls: each width its own call (the QA context is the widest), the same answers.
    split, split_calls = answer_batch([ask(served[name], fields) for name, fields in REQUESTS.items()], call_cost=0,
                                      packed=False)
    assert split_calls > calls
    for expected, got in zip(mixed, split):
        assert got.keys() == expected.keys()
        assert {k: v for k, v in got.items() if k != "score"} == {k: v for k, v in expected.items() if k != "score"}
        if expected.get("score") is not None:
            assert got["score"] == pytest.approx(expected["score"], abs=1e-5)


@pytest.mark.parametrize("parts, cost, expected", [
    ({"a": (4, 20), "b": (4, 22), "c": (2, 80)}, 40, [["c"], ["b", "a"]]),  # 2 x 80 + 8 x 22 + 2 x 40 < 10 x 80 + 40
    ({"a": (4, 20), "b": (4, 22), "c": (2, 80)}, 1000, [["c", "b", "a"]]),  # calls too dear to split
    ({"a": (1, 20), "b": (1, 30)}, 0, [["b"], ["a"]]),  # free calls: one per width
    ({"a": (8, 40)}, 40, [["a"]]),
])
def test_width_groups_split_where_the_padding_saved_pays_for_the_calls(parts, cost, expected):
    assert width_groups(parts, cost) == expected


def test_width_groups_are_the_cheapest_split(seed=0):
    rng = random.Random(seed)
    for _ in range(50):
        parts = {k: (rng.randint(1, 8), rng.randint(5, 200)) for k in "abcdef"[: rng.randint(1, 6)]}
        cost = rng.choice([0, 10, 40, 300])
        price = lambda groups: sum(sum(parts[k][0] for k in g) * max(parts[k][1] for k in g) + cost for g in groups)  # noqa: E731
        best = min(price(p) for p in partitions(list(parts)))
        groups = width_groups(parts, cost)
        assert sorted(k for g in groups for k in g) == sorted(parts)
        assert price(groups) == best


def partitions(keys: list) -> list[list[list]]:
    if not keys:
        return [[]]
    first, rest = keys[0], partitions(keys[1:])
    return [[[first], *p] for p in rest] + [p[:i] + [[first, *p[i]]] + p[i + 1:] for p in rest for i in range(len(p))]


def test_answers_have_the_api_shape(exported):
    served = endpoints(exported)
    label = answer_batch([ask(served["sentiment"], REQUESTS["sentiment"], all_scores=True)])[0][0]
    assert label["label"] in LABELS and set(label["scores"]) == set(LABELS)
    assert label["scores"][label["label"]] == label["score"]
    entities = answer_batch([ask(served["entities"], REQUESTS["entities"])])[0][0]
    text = REQUESTS["entities"]["text"]
    for entity in entities["entities"]:  # offsets into the request's own text (two spaces after john)
        assert text[entity["start"]: entity["end"]] == entity["text"]
    answer = answer_batch([ask(served["answers"], REQUESTS["answers"])])[0][0]
    context = REQUESTS["answers"]["context"]
    assert answer["answer"] == "" or context[answer["start"]:].startswith(answer["answer"])
    long = answer_batch([ask(served["sentiment"], {"text": "good " * 400})])[0][0]
    assert long["truncated"] is True and "max_length=256" in long["note"]


def test_bad_fields_name_the_field(exported):
    served = endpoints(exported)
    with pytest.raises(RequestError, match="^text: a non-empty string is required"):
        served["sentiment"].encode({"txt": "x"})
    with pytest.raises(RequestError, match="^context: "):
        served["answers"].encode({"question": "who?", "context": 3})
    with pytest.raises(RequestError, match="^tokens: "):
        served["entities"].encode({"tokens": []})


# --- a real server ---------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, config: Path, token: str | None = "secret"):
        self.port = free_port()
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        env.pop("LIT_PROMPTS_ADMIN_TOKEN", None)
        if token:
            env["LIT_PROMPTS_ADMIN_TOKEN"] = token
        self.process = subprocess.Popen(
            [sys.executable, "-m", "lit_prompts", "serve", "--config", str(config), f"--port={self.port}"],
            cwd=config.parent, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            self.wait_until_healthy(deadline=time.time() + 120)
        except BaseException:
            self.stop()  # never leave a server behind
            raise

    def wait_until_healthy(self, deadline: float) -> None:
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.process.stdout.read().decode()[-3000:]}")
            try:
                if self.get("/health")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError("the server did not become healthy in 120 s")

    def call(self, method: str, path: str, body=None, token: str | None = None) -> tuple[int, dict]:
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
                                         headers={"Content-Type": "application/json",
                                                  **({"Authorization": f"Bearer {token}"} if token else {})})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, parsed(response.read())
        except urllib.error.HTTPError as error:
            return error.code, parsed(error.read())

    def get(self, path: str):
        return self.call("GET", path)

    def predict(self, body) -> tuple[int, dict]:
        return self.call("POST", "/predict", body)

    def stop(self) -> None:
        """SIGTERM to the whole process group (LitServe's workers, manager and HTTP servers), then SIGKILL to
        whatever is left of it."""
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def parsed(body: bytes):
    """A JSON body, or the text of another (``/health`` answers ``ok``)."""
    try:
        return json.loads(body)
    except ValueError:
        return body.decode()


def write_config(folder: Path, backbone: str, entries: dict, **settings) -> Path:
    config = {"backbone": backbone, "prompts": entries, "accelerator": "cpu", "max_batch_size": 16,
              "batch_timeout": 0.2, **settings}
    path = folder / "serve.json"
    path.write_text(json.dumps(config))
    return path


@pytest.mark.integration
def test_server_answers_mixed_bursts_and_bad_requests_and_hot_loads(exported, tiny_backbone, tmp_path):
    # "broken": a QA prompt served with data settings its encoder refuses (stride above half of max_length).
    broken = {"source": exported["entries"]["answers"]["source"], "data": {"max_length": 64, "stride": 48}}
    server = Server(write_config(tmp_path, exported["backbone"], {**exported["entries"], "broken": broken}))
    try:
        status, listed = server.get("/prompts")
        assert status == 200 and {p["name"] for p in listed["prompts"]} == set(REQUESTS)
        assert list(listed["errors"]) == ["broken"] and "stride=48" in listed["errors"]["broken"]
        assert next(p for p in listed["prompts"] if p["name"] == "entities")["labels"] == TAGS
        served = endpoints(exported)
        alone = {name: answer_batch([ask(served[name], fields)])[0][0] for name, fields in REQUESTS.items()}
        # A concurrent burst mixing every prompt, valid and bad requests: each answered as alone.
        burst = [({"prompt": name, **fields}, name) for name, fields in REQUESTS.items()] * 3
        burst += [({"prompt": "nope", "text": "x"}, 404), ({"prompt": "sentiment", "txt": "x"}, 422),
                  ({"prompt": "answers", "question": "q", "context": 5}, 422),
                  ({"prompt": "broken", **REQUESTS["answers"]}, 503)]
        with ThreadPoolExecutor(len(burst)) as pool:
            results = list(pool.map(lambda case: server.predict(case[0]), burst))
        sizes = []
        for (body, expected), (status, answer) in zip(burst, results):
            if isinstance(expected, int):
                assert status == expected, answer
                continue
            assert status == 200, answer
            sizes.append(answer.pop("served")["batch_size"])
            for key, value in alone[expected].items():
                assert answer[key] == (pytest.approx(value, abs=1e-5) if key == "score" and value else value), key
        assert max(sizes) > 1  # LitServe batched requests for different prompts together
        status, answer = server.predict({"prompt": "nope", "text": "x"})
        assert status == 404 and "known: answers, broken, cloze, deep, entities, sentiment, sentiment_b" in answer["detail"]
        status, answer = server.predict({"prompt": "sentiment", "text": "x", "num_beams": "two"})
        assert status == 422 and answer["detail"].startswith("num_beams")
        assert server.predict(b"not json")[0] == 422
        status, answer = server.predict({"prompt": "sentiment", "text": "good " * 400})
        assert status == 200 and answer["truncated"] is True
        # Hot loading: the token is required; a prompt for another backbone is refused; load, use, unload.
        entry = {"name": "later", "source": exported["entries"]["sentiment"]["source"]}
        assert server.call("POST", "/admin/prompts", entry)[0] == 401
        assert server.call("POST", "/admin/prompts", entry, token="wrong")[0] == 401
        other = tmp_path / "gpt2-prompt"
        lit_prompts.PromptTuning(backbone=tiny_backbone("gpt2"), label_names=LABELS, num_virtual_tokens=4).export_prompt(other)
        status, answer = server.call("POST", "/admin/prompts", {"name": "other", "source": str(other)}, token="secret")
        assert status == 422 and "differs from" in answer["detail"], answer
        assert server.call("POST", "/admin/prompts", entry, token="secret")[0] == 200
        status, answer = server.predict({"prompt": "later", **REQUESTS["sentiment"]})
        assert status == 200 and answer["label"] == alone["sentiment"]["label"]
        assert "later" in {p["name"] for p in server.get("/prompts")[1]["prompts"]}
        assert server.call("DELETE", "/admin/prompts/later", token="secret")[0] == 200
        assert server.predict({"prompt": "later", **REQUESTS["sentiment"]})[0] == 404
        assert server.call("DELETE", "/admin/prompts/later", token="secret")[0] == 404
        # After all of that, a good request is still answered.
        status, answer = server.predict({"prompt": "deep", **REQUESTS["deep"]})
        assert status == 200 and answer["label"] == alone["deep"]["label"]
    finally:
        server.stop()


@pytest.mark.parametrize("arch", ["bert", "roberta", "distilbert", "mpnet", "gpt2", "llama", "t5"])
def test_prompts_of_any_lengths_and_placements_share_one_call(arch, tiny_backbone):
    """Input prompts of 2 and 5 vectors, deep prompts of 3 and a prefix of 4, and no prompt at all: one
    forward pass gives every part the hidden states its own call gives (at its real tokens)."""
    path = tiny_backbone(arch)
    with shared_backbones():
        methods = [randomized(lit_prompts.PromptTuning(backbone=path, label_names=LABELS, num_virtual_tokens=2)),
                   randomized(lit_prompts.PromptTuning(backbone=path, label_names=LABELS, num_virtual_tokens=5)),
                   randomized(lit_prompts.PTuningV2(backbone=path, label_names=LABELS, num_virtual_tokens=3)),
                   randomized(lit_prompts.PrefixTuning(backbone=path, label_names=LABELS, num_virtual_tokens=4,
                                                       reparameterize=False)),
                   lit_prompts.FullFineTuning(backbone=path, label_names=LABELS)]
    methods = [method.eval() for method in methods]  # (full fine-tuning trains with the shared model's dropout on)
    backbone = methods[0].backbone
    texts = [["the movie was really good", "bad"], ["an awful , boring plot"], ["fine", "the acting was fine and fun"],
             ["john visited paris"], ["ok then", "not good at all"]]
    parts = []
    for method, rows in zip(methods, texts):
        tokenizer = method.tokenizer
        tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token  # (GPT-2 has none)
        tokenizer.padding_side = "left" if arch in ("gpt2", "llama") else "right"  # as the data pads them
        batch = dict(tokenizer(rows, padding=True, return_tensors="pt"))
        parts.append((batch, *method.prompted(method.default_task).prompt_for(batch)))
    with torch.no_grad():
        for join in (backbone.hidden_states_together, backbone.hidden_states_packed):
            together = join(parts)
            # the batch's prefixes do not stay in the layers after a pass without gradient
            assert [module.lit_prompts_prefix for _, module in backbone.injector.layers] == [None] * len(backbone.injector)
            for method, (batch, _, _), joined in zip(methods, parts, together):
                alone = method.backbone.hidden_states(batch, *method.prompted(method.default_task).prompt_for(batch))
                real = batch["attention_mask"].bool()
                torch.testing.assert_close(joined[real], alone[real], atol=1e-5, rtol=1e-5)


def test_a_served_deep_prompt_is_the_keys_and_values_its_layers_compute(exported):
    """Served, P-tuning v2's deep prompts are projected once, into a prefix: the text's hidden states are
    those of the method's own deep prompts, projected in every call."""
    endpoint = endpoints(exported)["deep"]
    assert isinstance(endpoint.prompt, Prefix) and isinstance(endpoint.method.prompt, DeepPrompt)
    batch = endpoint.collate([endpoint.encode(REQUESTS["deep"])[0]])
    with torch.no_grad():
        served = endpoint.prompted().hidden_states(batch)
        own = endpoint.method.prompted(endpoint.method.default_task).hidden_states(batch)
    torch.testing.assert_close(served, own, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(served, endpoint.method.backbone.hidden_states(batch, PromptOutput()), atol=1e-3)


@pytest.mark.parametrize("args,expected", [
    (["--config", "/nonexistent/serve.yaml"], "File does not exist: '/nonexistent/serve.yaml'"),
    (["--backbone", "x", "--port", "abc"], 'Parser key "port": Expected a <class \'int\'>. Got value: abc'),
    (["--backbone", "x", "--max_batch_size", "0"], "max_batch_size=0 and workers_per_device=1 must be >= 1"),
])
def test_serve_settings_errors_are_one_line(args, expected, capsys):
    from lit_prompts.cli import main

    with pytest.raises(SystemExit) as stopped:
        main(["serve", *args])
    assert stopped.value.code == 1
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
