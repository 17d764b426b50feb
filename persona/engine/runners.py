"""Which runner serves: the one place that turns a server's choice of backend into a `Runner`.

- `torch` (persona's own decoder, or transformers for other architectures): continuous batching
  (`Scheduler`), or one reply at a time (`SerialRunner`, `--scheduler serial`);
- `llama` (llama.cpp, one sequence): one reply at a time;
- `vllm`: the gateway to vLLM servers (`VllmRunner`), which compute; this process only renders.

Every one of them meets the generation contract (persona.engine.contract); nothing above this
module asks which one it talks to.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from persona.engine import cores
from persona.engine.chat import ChatEngine
from persona.engine.contract import DEFAULT_MAX_QUEUE, Runner
from persona.engine.scheduler import Scheduler
from persona.engine.serial import SerialRunner
from persona.errors import ConfigError

BACKENDS = ("torch", "llama", "vllm")
SCHEDULERS = ("batch", "serial")


@dataclass
class RunnerChoice:
    """What a server runs on; refuses combinations that mean nothing, naming the flag."""

    model: str | None = None
    backend: str = "torch"
    precision: str = "auto"
    gguf: str | None = None
    device: str = "cpu"
    scheduler: str | None = None  # batch | serial; None: batch where the backend batches
    max_queue: int = DEFAULT_MAX_QUEUE
    vllm_urls: list[str] = field(default_factory=list)  # none: start one here (.venv-vllm)
    vllm_dtype: str | None = None  # what the vLLM servers compute in; None: float32
    vllm_python: str | None = None  # the interpreter of the vLLM started here
    vllm_args: str | None = None  # more flags for the vLLM started here
    gateway_url: str | None = None  # where vLLM's connector fetches personas (set once bound)
    api_key: str | None = None  # the gateway's key, which that fetch needs

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend={self.backend!r} must be one of {', '.join(BACKENDS)}")
        if self.scheduler is not None and self.scheduler not in SCHEDULERS:
            raise ConfigError(f"scheduler={self.scheduler!r} must be batch or serial")
        if self.max_queue < 0:
            raise ConfigError(f"max_queue={self.max_queue!r} must be 0 or more")
        if self.backend != "vllm":
            for flag, given in (
                ("--vllm-url", bool(self.vllm_urls)),
                ("--vllm-dtype", self.vllm_dtype is not None),
                ("--vllm-python", self.vllm_python is not None),
                ("--vllm-args", self.vllm_args is not None),
            ):
                if given:
                    raise ConfigError(f"{flag} needs --backend vllm")
            return
        for flag, given in (
            ("--precision", self.precision != "auto"),
            ("--scheduler", self.scheduler is not None),
            ("--gguf", self.gguf is not None),
        ):
            if given:
                raise ConfigError(
                    f"{flag} is for a model run here; with --backend vllm the vLLM servers "
                    "compute (tell the gateway their --dtype with --vllm-dtype)"
                )
        if self.vllm_urls:
            for flag, given in (
                ("--vllm-python", self.vllm_python is not None),
                ("--vllm-args", self.vllm_args is not None),
            ):
                if given:
                    raise ConfigError(f"{flag} is for the vLLM started here, without --vllm-url")


@dataclass
class Opened:
    engine: ChatEngine  # renders, fits the window, knows the model's fingerprint
    runner: Runner
    description: str  # for the server's first line: model, precision, how it runs


def open_runner(choice: RunnerChoice, log: Callable[[str], None]) -> Opened:
    """Load what `choice` names and start its runner (warnings go to `log`)."""
    if choice.backend == "vllm":
        return _open_vllm(choice, log)
    from persona.model.loader import load_chat_model

    scheduler = choice.scheduler or "batch"
    # `auto` means what it means for chat (int8 where torch has its x86 int8 kernel), batched or
    # not: int8 multiplies all the rows of a step in one kernel call, each row over its own range
    # (persona.model.quantize), so a batched step is no slower than float32 and replies equal chat's
    loaded = load_chat_model(
        choice.model,
        precision=choice.precision,
        backend=choice.backend,
        gguf=choice.gguf,
        device=choice.device,
    )
    engine = ChatEngine(loaded)
    runner = runner_for(engine, scheduler, choice.max_queue)
    # this thread serves HTTP from here on: the runner's own thread does the model's work
    cores.leave_to_workers()
    return Opened(engine, runner, f"{loaded.model_id} ({loaded.precision}, {scheduler})")


def runner_for(engine: ChatEngine, scheduler: str, max_queue: int = DEFAULT_MAX_QUEUE) -> Runner:
    """`batch` (continuous batching, the default) or `serial` (one reply at a time) over
    `engine`'s backend. A backend that runs one sequence at a time batches rows of one."""
    if scheduler == "batch":
        from persona.model.loader import on_passing_thread
        from persona.model.quantize import keep_prompt_weights

        # requests join between decode steps: each encodes its prompt with float32 weights,
        # kept rather than dequantised at every join (int8 only; about 0.4 GB for the default
        # model); made off this thread, which must not hold torch's thread pool (on_passing_thread)
        on_passing_thread(keep_prompt_weights, getattr(engine.backend, "model", None))
        return Scheduler(engine, max_queue=max_queue)
    return SerialRunner(engine, max_queue=max_queue)


def _open_vllm(choice: RunnerChoice, log: Callable[[str], None]) -> Opened:
    """The gateway in front of vLLM servers: the tokenizer and embedding matrix only, every
    server checked (docs/vllm.md); without --vllm-url, one vLLM started here, stopped with it."""
    from persona.engine.vllm.gateway import VllmRunner
    from persona.engine.vllm.kv import PersonaKV
    from persona.engine.vllm.model import load_gateway_engine
    from persona.engine.vllm.upstream import connect
    from persona.model.location import resolve_model_path
    from persona.paths import data_dir

    dtype = choice.vllm_dtype or "float32"
    engine = load_gateway_engine(choice.model, dtype)
    kv = PersonaKV(data_dir() / "vllm-kv", choice.model)
    urls = [url for given in choice.vllm_urls for url in given.split(",") if url.strip()]
    local = None
    if not urls:
        from persona.engine.vllm.local import start_local_vllm, vllm_python

        python = vllm_python(choice.vllm_python)
        log(f"starting vLLM ({python}); its log: {data_dir() / 'vllm.log'}")
        local = start_local_vllm(
            python=python,
            model_dir=resolve_model_path(choice.model)[0],
            dtype=dtype,
            kv_dir=kv.directory,
            gateway_url=choice.gateway_url,
            api_key=choice.api_key,
            extra_args=choice.vllm_args,
            state_dir=data_dir(),
        )
        urls = [local.url]
    try:
        upstreams = connect(urls, engine, dtype, warn=log)
        runner = VllmRunner(
            engine,
            upstreams,
            kv,
            dtype=dtype,
            max_queue=choice.max_queue,
            log=log,
            on_close=local.stop if local is not None else None,
        )
    except BaseException:
        if local is not None:
            local.stop()
        raise
    alive = sum(upstream.alive for upstream in upstreams)
    servers = "a vLLM started here" if local else f"{alive} vLLM server" + "s" * (alive != 1)
    return Opened(engine, runner, f"{engine.loaded.model_id} ({dtype} on {servers})")
