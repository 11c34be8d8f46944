"""``python -m lit_prompts serve`` with text-to-text prompts on a decoder, and the OpenAI chat route.

The unit tier checks the chat route's pure pieces (messages to request fields, the token limit, a
prompt's declared format) and its generation in process; the integration tier starts one real server
(``openai: true``) serving classification, NER and QA text-to-text prompts and a head prompt, and
checks ``/predict`` and ``/v1/chat/completions`` against the same prompts answered in process."""

from __future__ import annotations

import os
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from test_serving import Server, write_config

import lit_prompts
from lit_prompts.backbone import shared_backbones
from lit_prompts.data.qa import SPAN_LABELS
from lit_prompts.serving.batching import Item, answer_batch
from lit_prompts.serving.endpoint import PromptEndpoint, RequestError
from lit_prompts.serving.openai import chat_fields, declared_format, generate_reply, max_new_tokens_of

LABELS = ["negative", "positive"]
TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
CONTEXT = "john smith visited paris today and left ."
REQUESTS = {  # /predict fields per prompt
    "sentiment": {"text": "the movie was really good"},
    "story": {"text": "an awful , boring plot"},
    "entities": {"text": "john smith visited paris"},
    "answers": {"question": "who visited paris ?", "context": CONTEXT},
}
CHATS = {  # the same inputs as chat messages
    "sentiment": [{"role": "user", "content": "the movie was really good"}],
    "story": [{"role": "user", "content": "an awful , boring plot"}],
    "entities": [{"role": "user", "content": "john smith visited paris"}],
    "answers": [{"role": "system", "content": CONTEXT}, {"role": "user", "content": "who visited paris ?"}],
}
CHAT_MODELS = "answers, entities, sentiment, story"


def randomized(method, seed: int, scale: float):
    """Trained-looking prompts. On the tiny gpt2 only large prefixes change what it generates (its own
    weights are tiny), so the generation prompts are non-reparameterized prefixes of scale 5."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for parameter in method.parameters():
            if parameter.requires_grad:
                parameter.normal_(0, scale)
    return method


@pytest.fixture(scope="module")
def exported(tiny_backbone, tmp_path_factory) -> dict:
    """name -> serving entry of text-to-text prompts for every task on gpt2 (and one head prompt)."""
    gpt2, folder = tiny_backbone("gpt2"), tmp_path_factory.mktemp("served_text")
    text = {"backbone": gpt2, "task_format": "text_to_text"}
    prefix = {"num_virtual_tokens": 4, "reparameterize": False}
    methods = {
        "sentiment": (lit_prompts.PromptTuning(**text, label_names=LABELS, num_virtual_tokens=4), 0.5),
        "story": (lit_prompts.PrefixTuning(**text, label_names=LABELS, **prefix), 5.0),
        "entities": (lit_prompts.PrefixTuning(**text, task="ner", label_names=TAGS, **prefix), 5.0),
        "answers": (lit_prompts.PrefixTuning(**text, task="qa", label_names=SPAN_LABELS, **prefix), 5.0),
        "head": (lit_prompts.PromptTuning(backbone=gpt2, label_names=LABELS, num_virtual_tokens=4), 0.5),
    }
    entries = {}
    for seed, (name, (method, scale)) in enumerate(methods.items()):
        randomized(method, seed, scale).export_prompt(folder / name)
        entries[name] = {"source": str(folder / name), "data": {"max_length": 64} if name == "answers" else None}
    return {"backbone": gpt2, "entries": entries}


def endpoints(exported) -> dict[str, PromptEndpoint]:
    with shared_backbones():
        return {name: PromptEndpoint(name, lit_prompts.load(e["source"], backbone=exported["backbone"]), e["data"])
                for name, e in exported["entries"].items()}


def alone(endpoint: PromptEndpoint, fields: dict, **options) -> dict:
    """``/predict``'s answer, in process: the prompt alone in its batch."""
    return answer_batch([Item(endpoint, *endpoint.encode(fields), options)])[0][0]


@torch.no_grad()
def generated(endpoint: PromptEndpoint, fields: dict, max_new_tokens: int) -> str:
    """What the prompt's own format generates (greedy) for these fields."""
    method = endpoint.method
    form = method.formats[method.default_task]
    source = endpoint.collate([endpoint.encode(fields)[0]])["source"]
    kept = form.max_new_tokens, form.num_beams
    form.max_new_tokens, form.num_beams = max_new_tokens, 1
    try:
        return form.generate(method.prompted(method.default_task), source)[0]
    finally:
        form.max_new_tokens, form.num_beams = kept


# --- unit tier -------------------------------------------------------------------------------------
def test_chat_messages_become_the_prompts_fields():
    assert chat_fields("classification", CHATS["sentiment"]) == REQUESTS["sentiment"]
    assert chat_fields("qa", CHATS["answers"]) == REQUESTS["answers"]
    talk = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"}, {"role": "user", "content": [{"type": "text", "text": "john "},
                                                                             {"type": "text", "text": "smith"}]}]
    assert chat_fields("ner", talk) == {"text": "john smith"}  # the last user message, its text parts joined
    developer = [{"role": "developer", "content": CONTEXT}, {"role": "user", "content": "who?"}]
    assert chat_fields("qa", developer) == {"question": "who?", "context": CONTEXT}
    with pytest.raises(RequestError, match="^messages: a user message is required"):
        chat_fields("classification", [{"role": "system", "content": "x"}])
    with pytest.raises(RequestError, match="context from a system message, which is missing"):
        chat_fields("qa", [{"role": "user", "content": "who?"}])
    with pytest.raises(RequestError, match="only text content"):
        chat_fields("classification", [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}])


def test_the_token_limit_comes_from_max_completion_tokens_or_max_tokens():
    assert max_new_tokens_of({}, 20) == 20
    assert max_new_tokens_of({"max_tokens": None, "max_completion_tokens": None}, 20) == 20
    assert max_new_tokens_of({"max_tokens": 5}, 20) == 5
    assert max_new_tokens_of({"max_tokens": 5, "max_completion_tokens": 7}, 20) == 7
    for bad in (0, 513, True, 2.5):
        with pytest.raises(RequestError, match="^max_tokens: an integer in 1..512"):
            max_new_tokens_of({"max_tokens": bad}, 20)


def test_declared_format_reads_the_prompt_settings_without_loading(exported, tmp_path):
    entries = exported["entries"]
    assert declared_format(entries["entities"]) == "text_to_text"
    assert declared_format(entries["head"]) == "head"
    assert declared_format({"source": str(tmp_path / "missing")}) is None
    (tmp_path / "prompt.json").write_text("not json")
    assert declared_format({"source": str(tmp_path)}) is None


def test_a_chat_reply_is_the_prompts_own_greedy_generation(exported):
    served = endpoints(exported)
    for name, messages in CHATS.items():
        fields = chat_fields(served[name].task, messages)
        reply = generate_reply(served[name], fields, 5)
        assert reply["role"] == "assistant" and reply["content"] == generated(served[name], fields, 5), name
        assert reply["prompt_tokens"] > 0 and 0 < reply["completion_tokens"] <= 5
        assert reply["total_tokens"] == reply["prompt_tokens"] + reply["completion_tokens"]
    # The prefixes change what is generated: the answers below tell the prompts apart.
    texts = {name: generate_reply(served[name], {"text": "john smith visited paris"}, 5)["content"]
             for name in ("sentiment", "story", "entities")}
    assert len(set(texts.values())) == 3, texts


# --- a real server ---------------------------------------------------------------------------------
class TextServer(Server):
    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)  # LitServe's processes end at once on SIGTERM
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)

    def chat(self, model: str, messages: list[dict], **fields) -> tuple[int, dict]:
        return self.call("POST", "/v1/chat/completions", {"model": model, "messages": messages, **fields})


@pytest.mark.integration
def test_text_prompts_answer_on_predict_and_the_chat_route(exported, tmp_path):
    server = TextServer(write_config(tmp_path, exported["backbone"], exported["entries"], openai=True))
    try:
        served = endpoints(exported)
        expected = {name: alone(served[name], fields) for name, fields in REQUESTS.items()}
        assert expected["sentiment"]["label"] in LABELS and "score" in expected["sentiment"]  # rank classification
        assert "entities" in expected["entities"] and "answer" in expected["answers"]  # generated and parsed
        replies = {name: generated(served[name], chat_fields(served[name].task, CHATS[name]), 5) for name in CHATS}

        # A concurrent burst mixing every prompt on /predict with chat requests: each answered as alone.
        burst = [("predict", name) for name in REQUESTS] * 3 + [("chat", name) for name in CHATS] * 2
        with ThreadPoolExecutor(len(burst)) as pool:
            results = list(pool.map(lambda case: server.predict({"prompt": case[1], **REQUESTS[case[1]]})
                                    if case[0] == "predict" else server.chat(case[1], CHATS[case[1]], max_tokens=5),
                                    burst))
        for (route, name), (status, answer) in zip(burst, results):
            assert status == 200, (route, name, answer)
            if route == "predict":
                answer.pop("served")
                for key, value in expected[name].items():
                    assert answer[key] == (pytest.approx(value, abs=1e-5) if key == "score" and value else value), \
                        (name, key)
            else:
                assert answer["model"] == name and answer["choices"][0]["message"]["role"] == "assistant"
                assert answer["choices"][0]["message"]["content"] == replies[name], name
                usage = answer["usage"]
                assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0

        # /predict's generation options: a shorter answer, as in process.
        short = alone(served["answers"], REQUESTS["answers"], max_new_tokens=2)
        status, answer = server.predict({"prompt": "answers", **REQUESTS["answers"], "max_new_tokens": 2})
        assert status == 200 and answer["answer"] == short["answer"] != expected["answers"]["answer"]

        # The chat route: the default token limit is the prompt's max_new_tokens (20).
        status, answer = server.chat("story", CHATS["story"])
        assert status == 200 and answer["choices"][0]["message"]["content"] == generated(
            served["story"], REQUESTS["story"], 20)
        status, answer = server.chat("nope", CHATS["story"], max_tokens=5)
        assert status == 404 and answer["detail"].endswith(f"text-to-text prompts): {CHAT_MODELS}"), answer
        status, answer = server.chat("head", CHATS["sentiment"])
        assert status == 422 and "'head' is a head prompt" in answer["detail"] and CHAT_MODELS in answer["detail"]
        status, answer = server.chat("answers", CHATS["answers"][1:])
        assert status == 422 and "system message" in answer["detail"]
        assert server.chat("story", CHATS["story"], max_tokens=600)[0] == 422

        # A prompt hot-loaded through the admin route is chat-capable too, until unloaded.
        entry = {"name": "later", "source": exported["entries"]["story"]["source"]}
        assert server.call("POST", "/admin/prompts", entry, token="secret")[0] == 200
        status, answer = server.chat("later", CHATS["story"], max_tokens=5)
        assert status == 200 and answer["choices"][0]["message"]["content"] == replies["story"]
        assert server.call("DELETE", "/admin/prompts/later", token="secret")[0] == 200
        assert server.chat("later", CHATS["story"], max_tokens=5)[0] == 404
    finally:
        server.stop()
