"""`persona serve --backend vllm` with a real vLLM (its CPU build, from .venv-vllm, which `make
vllm` creates) on the default model: every persona, deep and soft, reaches vLLM as keys and values
through persona's KV connector, and greedy replies equal persona's own float32 engine's token for
token at the default repetition penalty, alone and 8 at once; a persona whose keys and values do
not match their hash, or cannot be fetched, fails its own request only; the start-up checks refuse
a server without the connector, or on another model, in one line.

Two vLLM starts in all: one the gateway starts itself (no --vllm-url), one by hand without the
connector (with --enable-prompt-embeds, which lets the gateway tell another matrix of the same
shape apart). Marked `vllm` (left out of the default run: each start takes a minute or more
here); run with `pytest -m vllm`. Skipped, saying why, where .venv-vllm is absent or vLLM does
not start.
"""

from __future__ import annotations

import concurrent.futures
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
VLLM_ARGS = "--enforce-eager --max-model-len 2048"  # eager: a start in a minute, not several
DEEP = ("falstaff", "hamlet", "juliet", "lear", "rosalind")  # the starters
SOFT = ("falstaff-soft", "hamlet-soft")
CONVERSATIONS = [
    [{"role": "user", "content": "What do you think of honour?"}],
    [
        {"role": "user", "content": "Good morrow! Who are you?"},
        {"role": "assistant", "content": "A friend, good sir."},
        {"role": "user", "content": "Then tell me, what is love?"},
    ],
]
GREEDY = {"temperature": 0, "max_tokens": 24}  # the default repetition penalty (1.1)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def vllm_or_skip() -> None:
    if not VLLM_PYTHON.exists():
        pytest.skip(".venv-vllm is absent; `make vllm` creates it")
    found = subprocess.run([VLLM_PYTHON, "-c", "import vllm"], capture_output=True, text=True)
    if found.returncode != 0:
        pytest.skip(f"vllm does not import in .venv-vllm: {found.stderr.strip()[-300:]}")


@pytest.fixture(scope="module")
def vllm_url(default_model_store: Path, tmp_path_factory: pytest.TempPathFactory):
    """A vLLM server WITHOUT persona's connector (prompt embeddings on) on the default model's
    safetensors directory; its base URL."""
    vllm_or_skip()
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
        *VLLM_ARGS.split(),
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


def soft_personas(engine, library_path: Path | None = None) -> None:
    """A soft persona per name in SOFT: 20 virtual tokens of its starter's description's
    embeddings (where `persona train --kind soft` starts), speaking after the description."""
    from persona.library import open_library
    from persona.prompt.init import initial_prompt
    from persona.prompt.softprompt import SoftPrompt

    library = open_library(library_path)
    try:
        for name in SOFT:
            description = library.get_persona(name.removesuffix("-soft")).description
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


@pytest.fixture(scope="module")
def local_engine(default_model_store: Path):
    from persona.engine.chat import ChatEngine
    from persona.model.loader import load_chat_model

    previous = os.environ.get("PERSONA_HOME")
    os.environ["PERSONA_HOME"] = str(default_model_store.parent)
    try:
        return ChatEngine(load_chat_model(precision="fp32"))
    finally:
        if previous is None:
            os.environ.pop("PERSONA_HOME", None)
        else:
            os.environ["PERSONA_HOME"] = previous


@pytest.fixture(scope="module")
def gateway(default_model_store: Path, local_engine, tmp_path_factory: pytest.TempPathFactory):
    """`persona serve --backend vllm` with no --vllm-url: it starts vLLM from .venv-vllm with
    persona's connector, in a home with the starters and the soft personas."""
    vllm_or_skip()
    home = tmp_path_factory.mktemp("gateway-home")
    (home / "models").symlink_to(default_model_store, target_is_directory=True)
    saved = {name: os.environ.get(name) for name in ("PERSONA_HOME", "PERSONA_NO_STARTERS")}
    os.environ["PERSONA_HOME"] = str(home)
    os.environ.pop("PERSONA_NO_STARTERS", None)  # a new library gets the starter personas
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    try:
        soft_personas(local_engine)
        with running_server("--backend", "vllm", "--vllm-args", VLLM_ARGS) as running:
            yield running
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def greedy(api, name: str, messages) -> tuple[str, int, int]:
    reply = api.chat.completions.create(model=name, messages=messages, **GREEDY)
    return (
        reply.choices[0].message.content,
        reply.usage.prompt_tokens,
        reply.usage.completion_tokens,
    )


def test_every_persona_through_vllm_equals_persona_s_float32_engine(gateway, local_engine):
    from persona.engine.config import generation_config

    api = openai.OpenAI(base_url=gateway.url, api_key="unused", max_retries=0)
    listed = {model.id for model in api.models.list().data}
    assert set(DEEP) | set(SOFT) <= listed  # deep personas are served too
    bare = gateway.state.catalog.base_id
    served = {
        (name, index): greedy(api, name, messages)
        for name in (*DEEP, *SOFT)
        for index, messages in enumerate(CONVERSATIONS)
    }
    streamed = api.chat.completions.create(
        model=DEEP[1], messages=CONVERSATIONS[0], stream=True, **GREEDY
    )
    pieces = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert pieces == served[DEEP[1], 0][0]
    for (name, index), (text, prompt_tokens, completion_tokens) in served.items():
        prompt = gateway.library.get_prompt(name)
        # the server fills what a request leaves out from the persona's own defaults (falstaff's
        # repetition penalty), as the local engine does here
        config = generation_config(
            gateway.library.get_defaults(name), temperature=0, max_new_tokens=GREEDY["max_tokens"]
        )
        local = local_engine.reply(CONVERSATIONS[index], prompt, config)
        assert (text, completion_tokens) == (local, local_engine.last.new_tokens), (name, index)
        assert prompt_tokens == local_engine.last.prompt_tokens + prompt.num_virtual_tokens
    # 8 at once, deep, soft and bare mixed: each reply is its solo one
    mixed = [(name, 0) for name in (*DEEP[:3], *SOFT)] + [(DEEP[3], 1), (SOFT[0], 1), (bare, 0)]
    solo_bare = greedy(api, bare, CONVERSATIONS[0])
    with concurrent.futures.ThreadPoolExecutor(len(mixed)) as pool:
        together = list(pool.map(lambda job: greedy(api, job[0], CONVERSATIONS[job[1]]), mixed))
    for job, reply in zip(mixed, together, strict=True):
        assert reply == (solo_bare if job[0] == bare else served[job]), job


def test_a_persona_whose_keys_and_values_fail_fails_alone(gateway, local_engine):
    """One persona's keys and values do not match their hash, another's cannot be fetched at
    all: each request fails with an error that names the persona; one beside them is answered."""
    from persona.prompt.softprompt import SoftPrompt

    library = gateway.library
    base = gateway.library.get_prompt(DEEP[0])
    for seed, name in ((1, "tampered"), (2, "vanished")):
        library.add_version(
            name,
            SoftPrompt(
                base.embeddings * (1 + 0.01 * seed),
                name=name,
                kind="deep",
                layout=base.layout,
                fingerprint=base.fingerprint,
            ),
        )
    kv = gateway.state.runner.kv
    tampered, _ = kv.name_of(gateway.library.get_prompt("tampered"))
    vanished, _ = kv.name_of(gateway.library.get_prompt("vanished"))
    shutil.copy(kv.directory / f"{vanished}.safetensors", kv.directory / f"{tampered}.safetensors")
    (kv.directory / f"{vanished}.safetensors").unlink()
    api = openai.OpenAI(base_url=gateway.url, api_key="unused", max_retries=0)
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        jobs = {
            name: pool.submit(greedy, api, name, CONVERSATIONS[0])
            for name in ("tampered", "vanished", DEEP[2])
        }
    assert jobs[DEEP[2]].result()[0]
    for name, sha in (("tampered", tampered), ("vanished", vanished)):
        with pytest.raises(openai.APIError) as failed:
            jobs[name].result()
        message = str(failed.value)
        assert f"persona {name!r}" in message and sha[:12] in message and "log says why" in message


def test_the_gateway_refuses_a_server_without_the_connector(vllm_url, real_home):
    with pytest.raises(ConfigError) as refused:
        with running_server("--backend", "vllm", "--vllm-url", vllm_url):
            pass
    message = str(refused.value)
    assert f"the vLLM server at {vllm_url} runs without persona's KV connector" in message
    assert "--kv-transfer-config" in message and "\n" not in message


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
    with pytest.raises(ConfigError, match="not this gateway's model"):
        with running_server(
            "--model", str(tiny_model_dir), "--backend", "vllm", "--vllm-url", vllm_url
        ):
            pass


def test_a_bad_url_beside_the_real_server_is_left_out(gateway, real_home, capsys):
    """A second gateway in front of the vLLM the first one started (which has the connector)."""
    real = gateway.state.runner.upstreams[0].url
    gone = f"http://127.0.0.1:{free_port()}"
    with running_server("--backend", "vllm", "--vllm-url", f"{gone},{real}") as running:
        api = openai.OpenAI(base_url=running.url, api_key="unused", max_retries=0)
        model = running.state.catalog.base_id
        reply = api.chat.completions.create(model=model, messages=CONVERSATIONS[0], **GREEDY)
    assert reply.choices[0].message.content
    assert f"cannot reach the vLLM server at {gone}" in capsys.readouterr().err
