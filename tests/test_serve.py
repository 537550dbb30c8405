"""`scratchllm serve` against OpenAI's own client: chat and text completions, streamed and not, equal
to the engine and to `scratchllm generate`; hostile requests; concurrent and vanishing clients."""

import json
import threading
import time

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from _chat_helpers import Server, chat_tokenizer, endless, random_gpt, save_run  # noqa: E402

from scratchllm.chat.engine import Engine, Sampling  # noqa: E402

BLOCK = 4096  # long enough that a reply runs for a while: clients can leave in the middle of one
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"},
            {"role": "assistant", "content": "I am fine, thanks."}, {"role": "user", "content": "And you?"}]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve")
    tok, base = chat_tokenizer(), chat_tokenizer(chat=False)
    return (save_run(folder / "chatrun", endless(random_gpt(tok.vocab_size, block_size=BLOCK), tok), tok),
            save_run(folder / "baserun", random_gpt(base.vocab_size, block_size=256, seed=1), base))


@pytest.fixture(scope="module")
def servers(runs, cli_env_module, tmp_path_factory):
    logs = tmp_path_factory.mktemp("logs")
    started = [Server(run, logs / f"{run.name}.log", cli_env_module) for run in runs]
    try:
        yield [s.wait() for s in started]
    finally:
        for s in started:
            s.stop()


@pytest.fixture(scope="module")
def cli_env_module():
    import os
    import sys
    from pathlib import Path

    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHON"] = sys.executable
    return env


@pytest.fixture(scope="module")
def chat_server(servers):
    return servers[0]


@pytest.fixture(scope="module")
def client(chat_server):
    return openai.OpenAI(base_url=chat_server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def engine(runs):
    return Engine.from_run(runs[0])


def test_the_model_is_listed(client):
    models = client.models.list().data
    assert [m.id for m in models] == ["chatrun"]
    assert client.models.retrieve("chatrun").id == "chatrun"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")


def test_a_chat_reply_equals_the_engines_streamed_or_not(client, engine):
    expect = engine.complete(engine.prompt_ids(MESSAGES), Sampling(temperature=0, max_new_tokens=40))
    text = expect.run()
    whole = client.chat.completions.create(model="chatrun", messages=MESSAGES, temperature=0, max_tokens=40)
    assert whole.object == "chat.completion" and whole.choices[0].message.role == "assistant"
    assert whole.choices[0].message.content == text
    assert whole.choices[0].finish_reason == ("length" if expect.finish_reason == "length" else "stop")
    usage = whole.usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (len(expect.prompt), len(expect.ids))
    assert whole.usage.total_tokens == len(expect.prompt) + len(expect.ids)

    chunks = list(client.chat.completions.create(model="chatrun", messages=MESSAGES, temperature=0,
                                                 max_completion_tokens=40, stream=True,
                                                 stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[-2].choices[0].finish_reason == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(expect.ids)
    # The same conversation again: its prompt comes from the server's cache.
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == len(expect.prompt) - 1


def test_content_given_as_text_parts_is_the_same_text(client):
    parts = [{**m, "content": [{"type": "text", "text": m["content"]}]} for m in MESSAGES]
    a, b = (client.chat.completions.create(model="chatrun", messages=msgs, temperature=0, max_tokens=10)
            for msgs in (MESSAGES, parts))
    assert a.choices[0].message.content == b.choices[0].message.content


def test_text_completions_equal_scratchllm_generate(servers, runs, run_cli):
    base = openai.OpenAI(base_url=servers[1].url + "/v1", api_key="unused", max_retries=0)
    prompt = "Hello there, how"
    done = run_cli("generate", "--run", runs[1], "--prompt", prompt, "--temperature", "0",
                   "--max-new-tokens", "30", "--quiet")
    assert done.returncode == 0, done.stderr
    generated = done.stdout[len(prompt):-1]
    reply = base.completions.create(model="baserun", prompt=prompt, temperature=0, max_tokens=30)
    assert reply.choices[0].text == generated and reply.object == "text_completion"
    streamed = base.completions.create(model="baserun", prompt=prompt, temperature=0, max_tokens=30,
                                       stream=True)
    assert "".join(c.choices[0].text for c in streamed) == generated


def test_stop_strings_end_the_reply(client):
    full = client.chat.completions.create(model="chatrun", messages=MESSAGES, temperature=0, max_tokens=40)
    text = full.choices[0].message.content
    # A stop string the reply holds once, with no replacement mark in it.
    at = next(i for i in range(3, len(text) - 2)
              if "\ufffd" not in text[i:i + 2] and text.find(text[i:i + 2]) == i)
    cut = client.chat.completions.create(model="chatrun", messages=MESSAGES, temperature=0, max_tokens=40,
                                         stop=["never there", text[at:at + 2]])
    assert cut.choices[0].message.content == text[:at] and cut.choices[0].finish_reason == "stop"


def test_a_seed_makes_sampling_reproducible(client):
    def ask(seed):
        return client.chat.completions.create(model="chatrun", messages=MESSAGES, temperature=1.0, seed=seed,
                                              max_tokens=20).choices[0].message.content

    assert ask(3) == ask(3) != ask(4)


LONG = "hello there " * 3000

HOSTILE = [  # (path, body, status, param)
    ("/v1/chat/completions", b"{not json", 400, None),
    ("/v1/chat/completions", b"[1, 2]", 400, None),
    ("/v1/chat/completions", b"[" * 100_000, 400, None),
    ("/v1/chat/completions", b"\xff\xfe\x00", 400, None),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}, 400, "model"),
    ("/v1/chat/completions", {"model": "chatrun", "messages": "hi"}, 400, "messages"),
    ("/v1/chat/completions", {"model": "chatrun", "messages": []}, 400, "messages"),
    ("/v1/chat/completions", {"model": "chatrun", "messages": [{"role": "robot", "content": "hi"}]}, 400,
     "messages[0].role"),
    ("/v1/chat/completions", {"model": "chatrun", "messages": [{"role": "user", "content": 5}]}, 400,
     "messages[0].content"),
    ("/v1/chat/completions", {"model": "chatrun", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "x"}}]}]}, 400, "messages[0].content[0].type"),
    ("/v1/chat/completions", {"model": "chatrun", "messages": [{"role": "assistant", "content": "hi"}]}, 400,
     "messages"),
    ("/v1/chat/completions", {"model": "chatrun", "messages": [{"role": "user", "content": LONG}]}, 400,
     "messages"),
    ("/v1/chat/completions", {"model": "chatrun", "messages": MESSAGES, "temperature": 1e9}, 400,
     "temperature"),
    ("/v1/chat/completions", {"model": "chatrun", "messages": MESSAGES, "temperature": "hot"}, 400,
     "temperature"),
    ("/v1/chat/completions", {"model": "chatrun", "messages": MESSAGES, "max_tokens": -1}, 400, "max_tokens"),
    ("/v1/chat/completions", {"model": "chatrun", "messages": MESSAGES, "max_tokens": 1e30}, 400,
     "max_tokens"),
    ("/v1/chat/completions", {"model": "chatrun", "messages": MESSAGES, "max_completion_tokens": True}, 400,
     "max_completion_tokens"),
    ("/v1/chat/completions", {"model": "chatrun", "messages": MESSAGES, "n": 2}, 400, "n"),
    ("/v1/chat/completions", {"model": "chatrun", "messages": MESSAGES, "top_p": 1.5}, 400, "top_p"),
    ("/v1/chat/completions", {"model": "chatrun", "messages": MESSAGES, "seed": -1}, 400, "seed"),
    ("/v1/chat/completions", {"model": "chatrun", "messages": MESSAGES, "stop": ["a", "b", "c", "d", "e"]},
     400, "stop"),
    ("/v1/chat/completions", {"model": "chatrun", "messages": MESSAGES, "stream_options": 3}, 400,
     "stream_options"),
    ("/v1/chat/completions", {"model": "gpt-4", "messages": MESSAGES}, 404, "model"),
    ("/v1/completions", {"model": "chatrun", "prompt": ["a", "b"]}, 400, "prompt"),
    ("/v1/completions", {"model": "chatrun", "prompt": LONG}, 400, "prompt"),
    ("/v1/completions", {"model": "chatrun", "prompt": None}, 400, "prompt"),
    ("/v1/embeddings", {"model": "chatrun", "input": "hi"}, 404, None),
    ("/v1/models/nothing", None, 404, "model"),
]


def test_hostile_requests_get_openai_errors_and_the_server_lives_on(chat_server, client):
    for path, body, status, param in HOSTILE:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        r = (httpx.get(chat_server.url + path) if body is None
             else httpx.post(chat_server.url + path, content=data, timeout=30))
        assert r.status_code == status, (path, body if len(data) < 200 else data[:50], r.text)
        error = r.json()["error"]
        assert error["message"] and error["param"] == param, (path, error)
        assert error["type"] == ("invalid_request_error" if status == 400 else "not_found_error")
    r = httpx.get(chat_server.url + "/v1/chat/completions")  # the wrong method
    assert r.status_code == 400 and "error" in r.json()
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="chatrun", messages=MESSAGES, n=2)
    assert caught.value.param == "n"
    reply = client.chat.completions.create(model="chatrun", messages=MESSAGES, temperature=0, max_tokens=5)
    assert reply.usage.completion_tokens >= 1 and chat_server.health()["status"] == "ok"


def test_concurrent_streams_each_equal_what_they_get_alone(client):
    def ask(seed, out):
        stream = client.chat.completions.create(model="chatrun", messages=MESSAGES, temperature=1.0,
                                                seed=seed, max_tokens=30, stream=True)
        out[seed] = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    alone: dict = {}
    for seed in range(8):
        ask(seed, alone)
    together: dict = {}
    threads = [threading.Thread(target=ask, args=(seed, together)) for seed in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert together == alone and len(set(alone.values())) == 8


def test_a_client_that_leaves_frees_its_slot(chat_server, client):
    before = chat_server.health()["tokens_generated"]
    body = {"model": "chatrun", "messages": MESSAGES, "temperature": 0, "stream": True,
            "max_tokens": 100_000}
    with httpx.stream("POST", chat_server.url + "/v1/chat/completions", json=body, timeout=30) as r:
        lines = r.iter_lines()
        got = [next(lines) for _ in range(6)]
    assert any("delta" in line for line in got)
    deadline = time.monotonic() + 5
    while chat_server.health()["active"] and time.monotonic() < deadline:
        time.sleep(0.05)
    health = chat_server.health()
    assert health["active"] == 0
    time.sleep(0.3)
    spent = chat_server.health()["tokens_generated"] - before
    assert spent == health["tokens_generated"] - before < BLOCK // 2  # it stopped, well before the end
    t0 = time.monotonic()
    reply = client.chat.completions.create(model="chatrun", messages=MESSAGES, temperature=0, max_tokens=5)
    assert reply.choices[0].message.content and time.monotonic() - t0 < 5
    assert "cancelled" in chat_server.log.read_text()


def test_a_client_that_gives_up_on_a_whole_answer_frees_its_slot_too(chat_server):
    cancelled = chat_server.log.read_text().count("cancelled")
    body = {"model": "chatrun", "messages": MESSAGES, "temperature": 0, "max_tokens": 100_000}
    with pytest.raises(httpx.TimeoutException):
        httpx.post(chat_server.url + "/v1/chat/completions", json=body, timeout=0.3)
    deadline = time.monotonic() + 5
    while chat_server.log.read_text().count("cancelled") == cancelled and time.monotonic() < deadline:
        time.sleep(0.05)
    assert chat_server.log.read_text().count("cancelled") == cancelled + 1
    assert chat_server.health()["active"] == 0


def test_the_page_is_served_from_the_package_with_nothing_from_elsewhere(chat_server):
    page = httpx.get(chat_server.url + "/")
    assert page.status_code == 200 and "app.js" in page.text
    for name in ("app.js", "style.css"):
        text = httpx.get(f"{chat_server.url}/static/{name}").text
        assert text and "http://" not in text and "https://" not in text
    assert "http" not in page.text.replace('http-equiv', '')
