"""The OpenAI-compatible server of a language model: TestClient in-process, then a real uvicorn on loopback
driven by httpx and by the official openai client (tiny random Llama; one slow test on SmolLM2-135M)."""

import json
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelfoundry.config import ServeConfig
from modelfoundry.models.generation import SamplingParams, generate
from modelfoundry.models.llm import load_base_language_model
from modelfoundry.serve.app import create_app
from modelfoundry.serve.store import LoadedModel, store_for

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello world"}]


@pytest.fixture(scope="module")
def client(tiny_llm):
    with TestClient(create_app(ServeConfig(max_new_tokens=32), store_for(str(tiny_llm)))) as c:
        yield c


class ServerThread:
    """uvicorn serving `app` on 127.0.0.1 (a free port) in a thread."""

    def __init__(self, app):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.server.servers[0].sockets[0].getsockname()[1]}"
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)


def gauge(text, name):
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def test_completion_and_chat_match_generate(client, tiny_llm):
    lm = load_base_language_model(str(tiny_llm))
    body = client.post("/v1/completions", json={"model": str(tiny_llm), "prompt": "hello world", "max_tokens": 7,
                                                "temperature": 0}).json()
    expected = "".join(generate(lm, lm.tokenizer("hello world")["input_ids"], SamplingParams(max_new_tokens=7)))
    assert body["object"] == "text_completion" and body["choices"][0]["text"] == expected
    assert body["usage"]["prompt_tokens"] == len(lm.tokenizer("hello world")["input_ids"])
    assert body["choices"][0]["finish_reason"] in ("length", "stop")
    chat = client.post("/v1/chat/completions", json={"messages": CHAT, "max_tokens": 6, "temperature": 0}).json()
    expected = "".join(generate(lm, lm.prompt_ids(CHAT), SamplingParams(max_new_tokens=6)))
    assert chat["choices"][0]["message"] == {"role": "assistant", "content": expected}
    assert chat["usage"]["prompt_tokens"] == len(lm.prompt_ids(CHAT)) and chat["id"].startswith("chatcmpl-")


def test_streaming_chunks_join_to_the_whole_answer(client):
    body = {"messages": CHAT, "max_tokens": 8, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-2]["choices"][0]["finish_reason"] in ("length", "stop") and chunks[-1]["usage"]["total_tokens"]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    whole = client.post("/v1/chat/completions", json={**body, "stream": False}).json()
    assert text == whole["choices"][0]["message"]["content"]


def test_models_and_metrics(client, tiny_llm):
    model = client.get("/v1/models").json()["data"][0]
    assert model["id"] == str(tiny_llm) and model["owned_by"] == "modelfoundry"
    assert model["metadata"]["base"]["sha256"] and model["metadata"]["context_length"] == 256
    client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 3})
    text = client.get("/metrics").text
    assert gauge(text, "foundry_generated_tokens_total") >= 3 and gauge(text, "foundry_active_streams") == 0
    for name in ("foundry_time_to_first_token_seconds_count", "foundry_queue_duration_seconds_count",
                 "foundry_queued_requests", "foundry_generated_tokens_per_second"):
        assert name in text
    assert 'foundry_requests_total{route="/v1/completions",status="200"}' in text


@pytest.mark.parametrize("route, body, status, words", [
    ("/v1/completions", {"prompt": "hello " * 400, "max_tokens": 5}, 400, ["800 tokens", "256"]),
    ("/v1/completions", {"prompt": "hello " * 120, "max_tokens": 20}, 400, ["240 tokens", "max_tokens is 20", "256"]),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 10**9}, 400, ["max_tokens", "limit of 32"]),
    ("/v1/completions", {"prompt": "hi", "n": 3, "logprobs": 2}, 400, ["n=3", "logprobs=2"]),
    ("/v1/completions", {"prompt": "hi", "temperature": 5}, 400, ["temperature", "5"]),
    ("/v1/completions", {"prompt": "hi", "made_up": 1}, 400, ["made_up"]),
    ("/v1/completions", {"prompt": ["a", "b"]}, 400, ["one prompt"]),
    ("/v1/completions", {"prompt": ""}, 400, ["empty"]),
    ("/v1/completions", {"model": "other", "prompt": "hi"}, 404, ["other"]),
    ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]}, 400, ["wizard", "user"]),
    ("/v1/chat/completions", {"messages": [{"role": "user"}]}, 400, ["content"]),
    ("/v1/chat/completions", {"messages": []}, 400, ["messages"]),
    ("/v1/chat/completions", {"messages": CHAT, "stream": "yes"}, 400, ["stream"]),
])
def test_bad_requests_answer_4xx_naming_the_problem(client, route, body, status, words):
    response = client.post(route, json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]  # OpenAI's shape
    assert all(w in error["message"] for w in words) and error["hint"], error
    assert error["type"] == ("not_found_error" if status == 404 else "invalid_request_error")


@pytest.mark.parametrize("content", [b"\xff\xfe\xfa{", b"{not json", b"[1, 2]", b"\x00" * 10])
def test_unreadable_bodies_answer_400(client, content):
    response = client.post("/v1/chat/completions", content=content, headers={"content-type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["message"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.dictionaries(st.sampled_from(["model", "prompt", "messages", "max_tokens", "temperature", "top_p",
                                             "top_k", "stop", "seed", "stream", "n", "logprobs", "user", "junk",
                                             "repetition_penalty", "max_completion_tokens", "stream_options"]),
                            st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats()
                                         | st.text(max_size=20),
                                         lambda inner: st.lists(inner, max_size=3)
                                         | st.dictionaries(st.sampled_from(["role", "content", "x"]), inner,
                                                           max_size=3), max_leaves=8)),
       route=st.sampled_from(["/v1/completions", "/v1/chat/completions"]))
def test_fuzzed_bodies_never_answer_500(client, body, route):
    if isinstance(body.get("max_tokens"), int) and not isinstance(body["max_tokens"], bool):
        body["max_tokens"] = min(body["max_tokens"], 4)
    response = client.post(route, content=json.dumps(body, allow_nan=True), headers={"content-type":
                                                                                     "application/json"})
    assert response.status_code < 500, response.text


def test_api_keys_guard_the_routes(tiny_llm, tmp_path):
    from modelfoundry.serve.security import create_key

    key = create_key(tmp_path / "keys.txt", "alice")
    app = create_app(ServeConfig(api_keys_file=str(tmp_path / "keys.txt")), store_for(str(tiny_llm)))
    with TestClient(app) as c:
        refused = c.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2})
        assert refused.status_code == 401 and refused.json()["error"]["type"] == "authentication_error"
        too_large = c.post("/v1/completions", content=b"x" * 5_000_000, headers={"Authorization": f"Bearer {key}"})
        assert too_large.status_code == 413 and "bytes" in too_large.json()["error"]["message"]
        assert c.get("/v1/models").status_code == 401
        ok = c.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2},
                    headers={"Authorization": f"Bearer {key}"})
        assert ok.status_code == 200


def test_hang_up_mid_stream_under_load_frees_the_slot(tiny_llm):
    """4 concurrent streams on 2 slots; one client hangs up after its first chunk: the others finish, a later
    request is served at once, and no slot stays taken."""
    app = create_app(ServeConfig(max_streams=2, max_new_tokens=200, llm_queue_timeout_s=20),
                     store_for(str(tiny_llm)))
    with ServerThread(app) as server:
        results, submitted, engine = {}, [], app.state.served.engine
        submit = engine.submit
        engine.submit = lambda *args: submitted.append(submit(*args)) or submitted[-1]

        def stream(k):
            body = {"prompt": "hello world", "max_tokens": 200, "stream": True, "temperature": 1.0, "seed": k}
            with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=60) as response:
                for line in filter(None, response.iter_lines()):
                    if k == 0:
                        results[k] = "hung up"
                        return  # closes the connection mid-stream
                    results[k] = line

        threads = [threading.Thread(target=stream, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert results == {0: "hung up", 1: "data: [DONE]", 2: "data: [DONE]", 3: "data: [DONE]"}
        hung_up = next(s for s in submitted if s.params.seed == 0)
        assert hung_up.cancelled and hung_up.finish_reason is None and hung_up.completion_tokens < 100
        later = httpx.post(f"{server.url}/v1/completions", json={"prompt": "hi", "max_tokens": 3}, timeout=10)
        assert later.status_code == 200
        deadline = time.time() + 5
        while gauge(httpx.get(f"{server.url}/metrics").text, "foundry_active_streams") and time.time() < deadline:
            time.sleep(0.05)
        assert gauge(httpx.get(f"{server.url}/metrics").text, "foundry_active_streams") == 0
        assert app.state.served.engine.active == 0 and app.state.served.engine.queued == 0


def test_openai_client_streaming_and_not(tiny_llm):
    openai = pytest.importorskip("openai")
    with ServerThread(create_app(ServeConfig(max_new_tokens=16), store_for(str(tiny_llm)))) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none")
        name = client.models.list().data[0].id
        done = client.completions.create(model=name, prompt="hello world", max_tokens=5, temperature=0)
        assert done.choices[0].finish_reason in ("length", "stop") and done.usage.completion_tokens <= 5
        chat = client.chat.completions.create(model=name, messages=CHAT, max_tokens=6, temperature=0)
        streamed = client.chat.completions.create(model=name, messages=CHAT, max_tokens=6, temperature=0,
                                                  stream=True)
        text = "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices)
        assert text == chat.choices[0].message.content
        with pytest.raises(openai.BadRequestError, match="limit of 16"):
            client.completions.create(model=name, prompt="hi", max_tokens=10**9)
        with pytest.raises(openai.BadRequestError, match="wizard"):
            client.chat.completions.create(model=name, messages=[{"role": "wizard", "content": "x"}])


class SwitchingStore:
    """A registry stand-in: `resolve` names version 1 until `version` is changed (the alias moved)."""

    def __init__(self, directories):
        self.directories, self.version = directories, "1"

    serves_language_model = True

    def resolve(self):
        return "tiny", self.version, "production"

    def load(self, version=None):
        version = version or self.version
        return LoadedModel("tiny", version, "production", None,
                           language=load_base_language_model(str(self.directories[version])))

    def local_dir(self):
        return self.directories[self.version]


def test_hot_switch_new_requests_use_the_new_model_streams_finish_on_the_old(tiny_llm, tiny_gpt2):
    store = SwitchingStore({"1": tiny_llm, "2": tiny_gpt2})
    app = create_app(ServeConfig(poll_s=0.05, max_new_tokens=200), store)
    with ServerThread(app) as server:
        lines = []
        body = {"prompt": "hello", "max_tokens": 200, "stream": True, "temperature": 0}
        with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=60) as response:
            iterator = response.iter_lines()
            lines.append(next(iterator))
            store.version = "2"  # the alias moves while a stream runs on version 1
            deadline = time.time() + 10
            while httpx.get(f"{server.url}/v1/models").json()["data"][0]["metadata"]["version"] != "2":
                assert time.time() < deadline
                time.sleep(0.05)
            lines.extend(filter(None, iterator))
        assert lines[-1] == "data: [DONE]"  # the old stream finished on version 1
        after = httpx.post(f"{server.url}/v1/completions", json={"prompt": "hello", "max_tokens": 4,
                                                                  "temperature": 0}, timeout=10).json()
        gpt2 = load_base_language_model(str(tiny_gpt2))
        assert after["choices"][0]["text"] == "".join(generate(gpt2, gpt2.tokenizer("hello")["input_ids"],
                                                               SamplingParams(max_new_tokens=4)))


@pytest.mark.slow
def test_real_model_answers_through_the_openai_client():
    openai = pytest.importorskip("openai")
    with ServerThread(create_app(ServeConfig(max_new_tokens=32), store_for("smollm2-135m"))) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none")
        answer = client.chat.completions.create(
            model="smollm2-135m", messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=24, temperature=0)
        assert "Paris" in answer.choices[0].message.content
        pieces = client.completions.create(model="smollm2-135m", prompt="The capital of France is", max_tokens=8,
                                           temperature=0, stream=True)
        assert "Paris" in "".join(p.choices[0].text for p in pieces if p.choices)


def train_tiny_chat(tmp_path, tiny_llm, tracking):
    """A LoRA causal_lm run named tinychat on the tiny model (registered as version 1 with `tracking`)."""
    import pandas as pd

    from modelfoundry.api.training import run
    from modelfoundry.config import load_config

    pd.DataFrame([{"q": f"is review {i} good?", "a": "positive" if i % 2 else "negative"} for i in range(16)]).to_json(
        tmp_path / "pairs.jsonl", orient="records", lines=True)
    track = {"enabled": True, "uri": f"sqlite:///{tmp_path / 'foundry.db'}", "artifacts": str(tmp_path / "mlartifacts")}
    config = load_config({"name": "tinychat", "seed": 0,
                          "data": {"source": str(tmp_path / "pairs.jsonl"),
                                   "lm": {"prompt": "Sentiment: {q}", "completion": "a", "system": "One word."}},
                          "model": {"name": "llm", "base": str(tiny_llm), "lora": {"r": 4, "dropout": 0.0}},
                          "training": {"epochs": 1, "batch_size": 8},
                          "evaluation": {"plots": False, "generation": {"rows": 0}},
                          "tracking": track if tracking else {"enabled": False}})
    run(config, run_dir=tmp_path / "run", progress=False)
    return tmp_path / "run"


def served_answer(store, messages):
    with TestClient(create_app(ServeConfig(poll_s=0), store)) as c:
        model = c.get("/v1/models").json()["data"][0]
        answer = c.post("/v1/chat/completions", json={"model": "tinychat", "messages": messages, "max_tokens": 5,
                                                      "temperature": 0}).json()
    return model, answer


MESSAGES = [{"role": "user", "content": "Sentiment: is review 3 good?"}]


def test_a_trained_run_is_served_with_its_name_template_and_system(tiny_llm, tmp_path):
    """A causal_lm run directory (LoRA merged in) serves under its name; a chat answer equals what
    `load_language_model` + `generate` give for the run (its system message in the prompt)."""
    from modelfoundry.rundir import load_language_model

    run_dir = train_tiny_chat(tmp_path, tiny_llm, tracking=False)
    lm = load_language_model(run_dir)
    expected = "".join(generate(lm, lm.prompt_ids(MESSAGES), SamplingParams(max_new_tokens=5)))
    model, answer = served_answer(store_for(str(run_dir)), MESSAGES)
    assert model["id"] == "tinychat" and answer["choices"][0]["message"]["content"] == expected
    assert answer["usage"]["prompt_tokens"] == len(lm.prompt_ids(MESSAGES))
    assert "One word." in lm.tokenizer.decode(lm.prompt_ids(MESSAGES))


@pytest.mark.slow
def test_a_registered_language_model_is_served(tiny_llm, tmp_path):
    from modelfoundry.rundir import load_language_model

    run_dir = train_tiny_chat(tmp_path, tiny_llm, tracking=True)
    lm = load_language_model(run_dir)
    expected = "".join(generate(lm, lm.prompt_ids(MESSAGES), SamplingParams(max_new_tokens=5)))
    model, answer = served_answer(store_for("tinychat/1", f"sqlite:///{tmp_path / 'foundry.db'}"), MESSAGES)
    assert model["id"] == "tinychat" and model["metadata"]["version"] == "1"
    assert answer["choices"][0]["message"]["content"] == expected
