"""`persona serve --backend vllm` in front of a real vLLM server (its CPU build, from .venv-vllm,
which `make vllm` creates) on the default model: greedy replies of soft personas (the starters'
descriptions, as the system message and as the prompt's starting embeddings) equal persona's own
float32 engine's; the deep starters are neither listed nor run; and the start-up checks refuse a
model that is not the server's.

Marked `vllm` (left out of the default run: vLLM takes about a minute to start here); run with
`pytest -m vllm`. Skipped, saying why, where .venv-vllm is absent or vLLM does not start.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx2 as httpx
import openai
import pytest

from persona.errors import ConfigError
from persona.model.location import DEFAULT_MODEL_ID
from tests.serving import running_server

pytestmark = pytest.mark.vllm

VLLM_PYTHON = Path(__file__).resolve().parents[1] / ".venv-vllm" / "bin" / "python"
START_TIMEOUT_S = 600  # a CPU server compiles its kernels at the first start
STARTERS = ("falstaff", "hamlet", "juliet")  # deep: vLLM takes input-layer prompts only
PERSONAS = tuple(f"{name}-soft" for name in STARTERS)
CONVERSATIONS = [
    [{"role": "user", "content": "What do you think of honour?"}],
    [
        {"role": "user", "content": "Good morrow! Who are you?"},
        {"role": "assistant", "content": "A friend, good sir."},
        {"role": "user", "content": "Then tell me, what is love?"},
    ],
]
GREEDY = {"temperature": 0, "max_tokens": 32, "extra_body": {"repetition_penalty": 1.0}}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def vllm_url(default_model_store: Path, tmp_path_factory: pytest.TempPathFactory):
    """A vLLM server on the default model's safetensors directory; its base URL."""
    if not VLLM_PYTHON.exists():
        pytest.skip(".venv-vllm is absent; `make vllm` creates it")
    found = subprocess.run([VLLM_PYTHON, "-c", "import vllm"], capture_output=True, text=True)
    if found.returncode != 0:
        pytest.skip(f"vllm does not import in .venv-vllm: {found.stderr.strip()[-300:]}")
    port = free_port()
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    command = [
        VLLM_PYTHON,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(default_model_store / DEFAULT_MODEL_ID),
        "--served-model-name",
        "smollm2",
        "--enable-prompt-embeds",
        "--dtype",
        "float32",
        "--max-model-len",
        "2048",
        "--enforce-eager",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    environment = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    with open(log, "wb") as output:
        server = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=environment)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if server.poll() is not None:
                tail = log.read_text(errors="replace").strip().splitlines()[-3:]
                pytest.skip(f"vLLM did not start (exit {server.returncode}): {' | '.join(tail)}")
            try:
                if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.skip(f"vLLM did not answer within {START_TIMEOUT_S} s")
            time.sleep(1)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=30)


@pytest.fixture
def with_starters(real_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("PERSONA_NO_STARTERS")  # a new library gets the starter personas
    return real_home


def soft_personas(engine, library_path: Path | None = None) -> None:
    """A soft persona per starter in the library: 20 virtual tokens of its description's embeddings
    (where `persona train --kind soft` starts), speaking after the description."""
    from persona.library import open_library
    from persona.prompt.init import initial_prompt
    from persona.prompt.softprompt import SoftPrompt

    library = open_library(library_path)
    try:
        for starter, name in zip(STARTERS, PERSONAS, strict=True):
            description = library.get_persona(starter).description
            start, init = initial_prompt(
                engine.loaded.model, engine.tokenizer, 20, method="text", description=description
            )  # (20, D)
            prompt = SoftPrompt(
                start,
                name=name,
                description=description,
                fingerprint=engine.loaded.fingerprint,
                init=init,
                system=description,
            )
            library.add_version(name, prompt)
    finally:
        library.close()


def test_greedy_replies_through_vllm_equal_persona_s_float32_engine(vllm_url, with_starters):
    from persona.engine.chat import ChatEngine
    from persona.engine.config import GenerationConfig
    from persona.model.loader import load_chat_model

    engine = ChatEngine(load_chat_model(precision="fp32"))
    soft_personas(engine)
    served: dict[tuple[str, int], tuple[str, int, int]] = {}
    with running_server("--backend", "vllm", "--vllm-url", vllm_url) as running:
        api = openai.OpenAI(base_url=running.url, api_key="unused", max_retries=0)
        listed = {model.id for model in api.models.list().data}
        assert set(PERSONAS) <= listed and not listed & set(STARTERS)  # deep: not listed
        with pytest.raises(openai.BadRequestError, match="the vllm backend cannot run"):
            api.chat.completions.create(model="hamlet", messages=CONVERSATIONS[0], **GREEDY)
        for name in PERSONAS:
            for index, messages in enumerate(CONVERSATIONS):
                reply = api.chat.completions.create(model=name, messages=messages, **GREEDY)
                usage = reply.usage
                served[name, index] = (
                    reply.choices[0].message.content,
                    usage.prompt_tokens,
                    usage.completion_tokens,
                )
        streamed = api.chat.completions.create(
            model=PERSONAS[1], messages=CONVERSATIONS[0], stream=True, **GREEDY
        )
        pieces = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
        library = running.library
        prompts = {name: library.get_prompt(name) for name in PERSONAS}
    config = GenerationConfig(temperature=0, repetition_penalty=1.0, max_new_tokens=32)
    for (name, index), (text, prompt_tokens, completion_tokens) in served.items():
        prompt = prompts[name]
        local = engine.reply(CONVERSATIONS[index], prompt, config)
        assert text == local, (name, index)
        assert prompt_tokens == engine.last.prompt_tokens + prompt.num_virtual_tokens
        assert completion_tokens == engine.last.new_tokens
    assert pieces == served[PERSONAS[1], 0][0]


def another_matrix(directory: Path, target: Path) -> Path:
    """A model directory with the default's config and tokenizer and another embedding matrix of
    the same shape: all the gateway reads of a model, here not the server's."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    target.mkdir()
    for item in directory.iterdir():
        if item.suffix in (".json", ".jinja"):
            shutil.copy(item, target / item.name)
    with safe_open(str(directory / "model.safetensors"), framework="pt") as weights:
        embedding = weights.get_tensor("model.embed_tokens.weight")  # (V, D)
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(embedding.shape, generator=generator) * embedding.std() * 0.05
    save_file({"model.embed_tokens.weight": embedding + noise}, str(target / "model.safetensors"))
    return target


def test_the_gateway_refuses_a_server_on_another_model(
    vllm_url, default_model_store, tiny_model_dir, tmp_path
):
    other = another_matrix(default_model_store / DEFAULT_MODEL_ID, tmp_path / "other")
    with pytest.raises(ConfigError) as refused:
        with running_server("--model", str(other), "--backend", "vllm", "--vllm-url", vllm_url):
            pass
    message = str(refused.value)
    assert f"the vLLM server at {vllm_url} runs " in message and DEFAULT_MODEL_ID in message
    assert f"not this gateway's model {str(other)!r}" in message and "\n" not in message
    with pytest.raises(ConfigError, match="runs a model of another width"):
        with running_server(
            "--model", str(tiny_model_dir), "--backend", "vllm", "--vllm-url", vllm_url
        ):
            pass


def test_a_bad_url_beside_the_real_server_is_left_out(vllm_url, real_home, capsys):
    gone = f"http://127.0.0.1:{free_port()}"
    with running_server("--backend", "vllm", "--vllm-url", f"{gone},{vllm_url}") as running:
        api = openai.OpenAI(base_url=running.url, api_key="unused", max_retries=0)
        model = running.state.catalog.base_id
        reply = api.chat.completions.create(model=model, messages=CONVERSATIONS[0], **GREEDY)
    assert reply.choices[0].message.content
    assert f"cannot reach the vLLM server at {gone}" in capsys.readouterr().err
