"""`persona serve --backend vllm` against small local stand-ins for vLLM's HTTP API (with or
without persona's KV connector), on the tiny model: what the gateway sends (N placeholder ids and
the conversation's, the persona's keys and values named for the connector, the sampling fields),
what it makes of the answer, the persona KV route, the start-up checks, servers that go away,
and clients that leave. The real vLLM server is in tests/test_vllm.py (marked vllm)."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx2 as httpx
import openai
import pytest
import torch

from persona.engine.backend import backend_for
from persona.engine.prompt_kv import persona_kv
from persona.errors import ConfigError
from persona.kvconnector.store import parse_kv
from persona.paths import library_path
from persona.prompt.deep import KVLayout
from tests.serving import add_persona, running_server

STOP_TEXT = "<|im_end|>"


class StubVllm:
    """A loopback HTTP server that answers as vLLM's /v1/models and /v1/completions do: every
    completion is `tokens` (then the end-of-turn token), streamed one event per token."""

    def __init__(
        self,
        tokens,
        stop_id,
        *,
        embeds=True,
        mismatch=False,
        delay_s=0.0,
        connector=True,
        width=None,
    ):
        self.tokens, self.stop_id = list(tokens), stop_id
        self.embeds, self.mismatch, self.delay_s = embeds, mismatch, delay_s
        # as persona's connector answers: a request naming a persona badly, or carrying another
        # width than `width` (None: any), fails with vLLM's 500
        self.connector, self.width = connector, width
        self.requests: list[dict] = []  # streamed completions' bodies, prompt_embeds decoded
        self.aborted = threading.Event()  # a client closed a stream before its end
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                stub._json(
                    self, 200, {"data": [{"id": "stub", "root": "/m", "max_model_len": 200}]}
                )

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path != "/v1/completions":
                    return stub._json(self, 404, {"detail": "Not Found"})
                stub._complete(self, body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def _json(self, handler, status, data):
        raw = json.dumps(data).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(raw)))
        handler.end_headers()
        handler.wfile.write(raw)

    def _complete(self, handler, body):
        if "prompt_embeds" in body:
            if not self.embeds:
                message = "You must set `--enable-prompt-embeds` to input `prompt_embeds`."
                return self._json(handler, 400, {"error": {"message": message, "code": 400}})
            raw = base64.b64decode(body["prompt_embeds"])
            body["prompt_embeds"] = torch.load(io.BytesIO(raw), weights_only=True)
        params = body.get("kv_transfer_params") or {}
        if self.connector and (
            ("persona_kv" in params and len(str(params["persona_kv"])) != 64)
            or (self.width is not None and params.get("persona_width", self.width) != self.width)
        ):
            error = {"error": {"message": "Internal server error", "code": 500}}
            return self._json(handler, 500, error)
        if not body.get("stream"):  # the start-up probe
            count = body["max_tokens"]
            shift = 1.0 if self.mismatch and "prompt_embeds" in body else 0.0
            choice = {
                "text": "",
                "token_ids": self.tokens[:count],
                "logprobs": {"token_logprobs": [-0.5 - shift] * count},
            }
            return self._json(handler, 200, {"choices": [choice]})
        self.requests.append(body)
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Connection", "close")
        handler.end_headers()
        produced = self.tokens[: body["max_tokens"]]
        ended = len(produced) < body["max_tokens"]
        events = [
            {"choices": [{"text": "", "token_ids": [t], "finish_reason": None}]} for t in produced
        ]
        if ended:
            events.append(
                {"choices": [{"text": "", "token_ids": [self.stop_id], "finish_reason": "stop"}]}
            )
        else:
            events[-1]["choices"][0]["finish_reason"] = "length"
        try:
            for event in events:
                handler.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                handler.wfile.flush()
                time.sleep(self.delay_s)
            handler.wfile.write(b"data: [DONE]\n\n")
            handler.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.aborted.set()


@pytest.fixture
def tokens(tiny):
    return list(tiny.tokenizer.encode(" Hello there! How are you today?", add_special_tokens=False))


@pytest.fixture
def stop_id(tiny):
    return tiny.tokenizer.convert_tokens_to_ids(STOP_TEXT)


@pytest.fixture
def stubs(tokens, stop_id):
    made: list[StubVllm] = []

    def make(**kwargs):
        made.append(StubVllm(tokens, stop_id, **kwargs))
        return made[-1]

    yield make
    for stub in made:
        stub.stop()


@pytest.fixture
def persona(tiny):
    add_persona(library_path(), "tester", tiny.fingerprint, seed=3)
    from persona.library import open_library

    library = open_library(library_path())
    try:
        return library.get_prompt("tester")
    finally:
        library.close()


def gateway(tiny_model_dir, *urls, dtype="float32"):
    flags = ["--model", str(tiny_model_dir), "--backend", "vllm", "--vllm-dtype", dtype]
    return running_server(*flags, *(flag for url in urls for flag in ("--vllm-url", url)))


def client(running):
    return openai.OpenAI(base_url=running.url, api_key="unused", max_retries=0)


def bare(running):
    """The id of the model without a persona."""
    return running.state.catalog.base_id


HELLO = [{"role": "user", "content": "hello there"}]


def test_the_gateway_sends_the_persona_s_positions_and_the_conversation_and_decodes_the_ids(
    tiny_model_dir, tiny, tiny_native, stubs, persona, tokens
):
    stub = stubs()
    with gateway(tiny_model_dir, stub.url) as running:
        reply = client(running).chat.completions.create(
            model="tester", messages=HELLO, temperature=0, max_tokens=30, seed=7, top_p=0.5
        )
        engine = running.state.runner.engine
        ids, _ = engine.fit_window(HELLO, persona, None, 30)
    assert reply.choices[0].message.content == tiny.tokenizer.decode(
        tokens, skip_special_tokens=True
    )
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.completion_tokens == len(tokens)  # the end-of-turn token is not counted
    assert reply.usage.prompt_tokens == len(ids) + persona.num_virtual_tokens
    sent = stub.requests[-1]
    rows = persona.num_virtual_tokens
    assert sent["prompt"] == [ids[0]] * rows + ids and "prompt_embeds" not in sent
    name = sent["kv_transfer_params"]["persona_kv"]
    layout = KVLayout.of_config(tiny.model.config)
    assert sent["kv_transfer_params"] == {
        "persona_kv": name,
        "persona_rows": rows,
        "persona_width": layout.width,
    }
    assert sent["cache_salt"] == name
    # the soft persona went as the keys and values persona's own engine computes for it
    stored = parse_kv(running.state.runner.persona_kv(name), name)  # (N, W)
    torch.testing.assert_close(stored, persona_kv(backend_for(tiny_native), persona))
    assert sent["model"] == "stub" and sent["stream"] and sent["return_token_ids"]
    assert sent["max_tokens"] == 30 and sent["temperature"] == 0 and sent["seed"] == 7
    assert sent["repetition_penalty"] == 1.1  # persona's default, sent explicitly
    assert sent["stop_token_ids"] == sorted(engine.stop_ids) and "stop" not in sent


def test_sampling_fields_and_a_compact_dtype_are_sent(tiny_model_dir, stubs, persona):
    stub = stubs()
    with gateway(tiny_model_dir, stub.url, dtype="bfloat16") as running:
        client(running).chat.completions.create(
            model="tester",
            messages=HELLO,
            temperature=0.8,
            top_p=0.5,
            max_tokens=3,
            extra_body={"top_k": 7, "repetition_penalty": 1.3},
        )
    sent = stub.requests[-1]
    assert "prompt_embeds" not in sent  # token ids, whatever the servers compute in
    assert (sent["temperature"], sent["top_p"], sent["top_k"]) == (0.8, 0.5, 7)
    assert sent["repetition_penalty"] == 1.3 and sent["max_tokens"] == 3


def test_a_reply_cut_by_length_and_by_a_stop_string(tiny_model_dir, tiny, stubs, tokens):
    stub = stubs(delay_s=0.05)
    with gateway(tiny_model_dir, stub.url) as running:
        api = client(running)
        short = api.chat.completions.create(model=bare(running), messages=HELLO, max_tokens=2)
        whole = tiny.tokenizer.decode(tokens, skip_special_tokens=True)
        cut = api.chat.completions.create(
            model=bare(running), messages=HELLO, stop=["How"], max_tokens=20
        )
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 2
    assert short.choices[0].message.content == tiny.tokenizer.decode(tokens[:2])
    assert cut.choices[0].message.content == whole[: whole.index("How")]
    assert cut.choices[0].finish_reason == "stop"
    assert stub.aborted.wait(5)  # the upstream stream was closed once the stop string came


def test_a_client_that_leaves_cancels_the_upstream_request(tiny_model_dir, stubs, tokens):
    stub = stubs(delay_s=0.5)
    with gateway(tiny_model_dir, stub.url) as running:
        stream = client(running).chat.completions.create(
            model=bare(running), messages=HELLO, stream=True, max_tokens=len(tokens)
        )
        next(iter(stream))
        stream.close()
        assert stub.aborted.wait(10)
        deadline = time.monotonic() + 5
        while running.state.runner.metrics()["active_rows"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert running.state.runner.metrics()["active_rows"] == 0


def test_each_request_goes_to_the_server_with_the_fewest_in_flight(tiny_model_dir, stubs, tokens):
    first, second = stubs(delay_s=0.2), stubs(delay_s=0.2)
    with gateway(tiny_model_dir, first.url, second.url) as running:
        api = client(running)
        threads = [
            threading.Thread(
                target=api.chat.completions.create,
                kwargs={"model": bare(running), "messages": HELLO, "max_tokens": 4},
            )
            for _ in range(4)
        ]
        for thread in threads:
            thread.start()
            time.sleep(0.05)
        for thread in threads:
            thread.join(30)
    assert len(first.requests) == len(second.requests) == 2


def test_start_refuses_a_server_it_cannot_reach(tiny_model_dir, stubs):
    gone = stubs()
    gone.stop()
    with pytest.raises(ConfigError, match=r"^cannot reach the vLLM server at http://127"):
        with gateway(tiny_model_dir, gone.url):
            pass


def test_start_refuses_a_server_without_the_connector(tiny_model_dir, stubs):
    with pytest.raises(ConfigError) as refused:
        with gateway(tiny_model_dir, stubs(connector=False).url):
            pass
    message = str(refused.value)
    assert "runs without persona's KV connector; start it with --kv-transfer-config" in message
    assert "\n" not in message


def test_start_refuses_a_server_whose_model_takes_another_width(tiny_model_dir, stubs, tiny):
    width = KVLayout.of_config(tiny.model.config).width
    with pytest.raises(ConfigError, match=f"its KV cache is not .* {width} wide"):
        with gateway(tiny_model_dir, stubs(width=width + 8).url):
            pass
    with gateway(tiny_model_dir, stubs(width=width, embeds=False).url):  # the right one serves
        pass


def test_start_refuses_a_server_on_another_model_naming_both(tiny_model_dir, stubs, tiny):
    with pytest.raises(ConfigError) as refused:
        with gateway(tiny_model_dir, stubs(mismatch=True).url):
            pass
    message = str(refused.value)
    assert "runs '/m'" in message and str(tiny.fingerprint) in message
    assert "\n" not in message


def test_a_bad_server_among_several_is_left_out_with_a_warning(tiny_model_dir, stubs, capsys):
    good, bad = stubs(), stubs(connector=False)
    with gateway(tiny_model_dir, f"{bad.url}/v1,{good.url}") as running:
        reply = client(running).chat.completions.create(
            model=bare(running), messages=HELLO, max_tokens=20
        )
    assert reply.choices[0].message.content
    assert len(good.requests) == 1 and not bad.requests
    assert f"the vLLM server at {bad.url} runs without persona's" in capsys.readouterr().err


def test_a_server_that_goes_away_leaves_the_others_then_503(tiny_model_dir, stubs, capsys):
    first, second = stubs(), stubs()
    with gateway(tiny_model_dir, first.url, second.url) as running:
        api = client(running)
        first.stop()
        for _ in range(3):
            assert api.chat.completions.create(
                model=bare(running), messages=HELLO, max_tokens=20
            ).choices[0]
        assert len(second.requests) == 3
        assert "is down" in capsys.readouterr().err
        second.stop()
        with pytest.raises(openai.APIStatusError) as failed:
            api.chat.completions.create(model=bare(running), messages=HELLO, max_tokens=20)
        assert failed.value.status_code == 503
        assert "no vLLM server is reachable" in failed.value.message
        with pytest.raises(openai.APIStatusError) as again:  # refused at once now
            api.chat.completions.create(model=bare(running), messages=HELLO, max_tokens=20)
        assert again.value.status_code == 503


def test_the_gateway_flags_are_checked(tiny_model_dir, stubs, tmp_path):
    flags = ["--model", str(tiny_model_dir), "--backend", "vllm"]
    missing = tmp_path / "no-python"
    with pytest.raises(ConfigError, match=f"no vLLM to start: {missing} is absent"):
        with running_server(*flags, "--vllm-python", str(missing)):
            pass
    flags += ["--vllm-url", stubs().url]
    with pytest.raises(ConfigError, match="--precision is for a model run here"):
        with running_server(*flags, "--precision", "int8"):
            pass
    with pytest.raises(ConfigError, match="--vllm-args is for the vLLM started here"):
        with running_server(*flags, "--vllm-args=--enforce-eager"):
            pass


def test_deep_personas_are_listed_and_served_and_their_keys_and_values_handed_out_with_the_key(
    tiny_model_dir, tiny, stubs
):
    from persona.library import open_library
    from persona.prompt.deep import prefix_from_embeddings
    from persona.prompt.softprompt import SoftPrompt

    start = torch.randn(
        3, tiny.model.config.hidden_size, generator=torch.Generator().manual_seed(5)
    )
    deep = SoftPrompt(
        prefix_from_embeddings(tiny.model, start),  # (3, W)
        name="iago",
        kind="deep",
        layout=KVLayout.of_config(tiny.model.config),
        fingerprint=tiny.fingerprint,
    )
    library = open_library(library_path())
    library.add_version("iago", deep)
    library.close()
    stub = stubs()
    flags = ["--model", str(tiny_model_dir), "--backend", "vllm", "--vllm-url", stub.url]
    with running_server(*flags, "--api-key", "sesame") as running:
        api = openai.OpenAI(base_url=running.url, api_key="sesame", max_retries=0)
        assert "iago" in {model.id for model in api.models.list().data}
        api.chat.completions.create(model="iago", messages=HELLO, max_tokens=3)
        sent = stub.requests[-1]["kv_transfer_params"]
        assert (sent["persona_kv"], sent["persona_rows"]) == (deep.sha256, 3)  # its own checksum
        route = f"{running.url}/personas/{deep.sha256}/kv"
        assert httpx.get(route).status_code == 401
        answer = httpx.get(route, headers={"Authorization": "Bearer sesame"})
        assert answer.status_code == 200
        assert torch.equal(parse_kv(answer.content, deep.sha256), deep.embeddings)
        unknown = httpx.get(route.replace(deep.sha256, "0" * 64), headers=answer.request.headers)
        assert unknown.status_code == 404


def test_the_dtype_names_of_the_command_line_are_the_wire_dtypes():
    from persona.cli.serve_cmd import VLLM_DTYPES
    from persona.engine.vllm.upstream import PROBE_TOLERANCE
    from persona.engine.vllm.wire import WIRE_DTYPES

    assert tuple(WIRE_DTYPES) == VLLM_DTYPES and tuple(PROBE_TOLERANCE) == VLLM_DTYPES


class Ended:
    """A sink that records how its request ended."""

    def __init__(self):
        self.ended = threading.Event()
        self.how = ""

    def piece(self, text):
        pass

    def finish(self, reason, prompt_tokens, completion_tokens):
        self.how = reason
        self.ended.set()

    def error(self, error):
        self.how = f"error: {error}"
        self.ended.set()


def test_a_request_submitted_while_the_gateway_closes_still_ends(tiny_model_dir, stubs, tmp_path):
    """close() racing submit() must not stop the gateway's loop between submit's check and its
    scheduling of the request: that request would never end, and its client would wait forever."""
    import asyncio

    from persona.engine.config import GenerationConfig
    from persona.engine.contract import Request
    from persona.engine.vllm import gateway as module
    from persona.engine.vllm.kv import PersonaKV
    from persona.engine.vllm.model import load_gateway_engine
    from persona.engine.vllm.upstream import connect

    engine = load_gateway_engine(str(tiny_model_dir), "float32")
    stub = stubs(delay_s=0.05)
    kv = PersonaKV(tmp_path / "kv", None)
    runner = module.VllmRunner(engine, connect([stub.url], engine, "float32", warn=print), kv)
    schedule, closing = asyncio.run_coroutine_threadsafe, []

    def racing(coroutine, loop):
        if not closing:  # the request's own scheduling: let close() run as far as it can first
            closing.append(threading.Thread(target=runner.close))
            closing[0].start()
            time.sleep(0.5)
        return schedule(coroutine, loop)

    sink = Ended()
    module.asyncio.run_coroutine_threadsafe = racing
    try:
        runner.submit(Request(HELLO, None, GenerationConfig(max_new_tokens=4)), sink)
    finally:
        module.asyncio.run_coroutine_threadsafe = schedule
    closing[0].join(timeout=30)
    assert sink.ended.wait(10), "the request never ended"
