"""`persona reply`: one reply, non-interactive, for scripts."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from persona.cli import startup
from persona.engine.config import GenerationConfig, PersonaDefaults, stop_strings
from persona.engine.config import generation_config as effective_config
from persona.errors import ConfigError

if TYPE_CHECKING:  # torch-free at start: the reply may come from a running server
    from persona.prompt.render import Message


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "reply",
        help="reply to one message (non-interactive)",
        description="Reply to MESSAGE once and exit. Plain output streams the reply; --json prints one object.",
    )
    parser.add_argument(
        "message", metavar="MESSAGE", help="the message to answer ('-' reads it from stdin)"
    )
    who = parser.add_mutually_exclusive_group()
    who.add_argument(
        "--persona",
        metavar="NAME",
        help="a persona in the library, or a .safetensors soft-prompt file",
    )
    who.add_argument(
        "--no-persona", action="store_true", help="the model's own voice, no soft prompt"
    )
    parser.add_argument(
        "--system", metavar="TEXT", help="a written system message (in addition to any persona)"
    )
    parser.add_argument(
        "--model",
        metavar="PATH",
        help="a local Hugging Face model directory (default: the embedded SmolLM2-135M-Instruct, or $PERSONA_MODEL)",
    )
    parser.add_argument(
        "--library",
        metavar="PATH",
        type=Path,
        help="the persona library file (default: in the data dir)",
    )
    add_precision_argument(parser)
    add_generation_arguments(parser)
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object instead of streaming text"
    )
    parser.add_argument(
        "--local",
        action="store_true",
        help="load the model here even if `persona serve` is running",
    )
    parser.add_argument(
        "--warm",
        type=positive_minutes,
        metavar="MINUTES",
        help="with no server running, start one in the background that stops after MINUTES "
        "without a request, and reply through it: the replies after this one skip the model's "
        "start (default: $PERSONA_WARM, else off)",
    )
    parser.set_defaults(func=run)


def positive_minutes(text: str) -> float:
    """An argparse type: a positive, finite number of minutes."""
    from persona.serve.warm import parse_minutes

    value = parse_minutes(text)
    if value is None:
        raise argparse.ArgumentTypeError(f"must be a positive number of minutes, got {text!r}")
    return value


def add_precision_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "int8"),
        default="auto",
        help="model weights for chat: int8 decodes faster on CPU (default: auto, see README)",
    )
    parser.add_argument(
        "--backend",
        choices=("torch", "llama"),
        default="torch",
        help="torch (default), or llama: llama.cpp runs the GGUF file, soft prompt included (needs persona[llama])",
    )
    parser.add_argument(
        "--gguf",
        metavar="FILE",
        help="with --backend llama: the model's .gguf file (default: the embedded model's)",
    )
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda", "mps"),
        default="auto",
        help="where the model runs: auto (default) takes a CUDA or MPS GPU where torch sees one, "
        "in bfloat16; cpu runs persona's own decoder (int8 by default)",
    )


def add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    """Sampling flags; one not given is None, so the persona's own default (`persona set`) or
    else the built-in one applies."""
    built_in = GenerationConfig()
    parser.add_argument(
        "--temperature",
        type=float,
        help=f"0 is greedy (default: the persona's, else {built_in.temperature:g})",
    )
    parser.add_argument(
        "--top-p",
        type=float,
        help=f"nucleus sampling mass (default: the persona's, else {built_in.top_p:g})",
    )
    parser.add_argument(
        "--top-k",
        type=int,
        help=f"sample among the k likeliest tokens, 0 for all (default: the persona's, else {built_in.top_k})",
    )
    parser.add_argument(
        "--repetition-penalty",
        type=float,
        help=f"1.0 disables (default: the persona's, else {built_in.repetition_penalty:g})",
    )
    parser.add_argument(
        "--max-tokens",
        type=int,
        help=f"longest reply in tokens (default: the persona's, else {built_in.max_new_tokens})",
    )
    parser.add_argument("--seed", type=int, help="seed for sampling, for a reproducible reply")
    add_strength_argument(parser, f"the persona's, else {built_in.strength:g}")


def add_strength_argument(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument(
        "--strength",
        type=float,
        metavar="S",
        help="persona strength: 1 is the persona as trained, above 1 pushes each token further "
        "from the bare model's (classifier-free guidance; costs a second row), 0 is the bare "
        f"model (default: {default})",
    )


def given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The sampling values named on the command line, as GenerationConfig fields (None: not given)."""
    return {
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "repetition_penalty": args.repetition_penalty,
        "max_new_tokens": args.max_tokens,
        "seed": args.seed,
        "strength": args.strength,
    }


def generation_config(
    args: argparse.Namespace, defaults: PersonaDefaults | None = None
) -> GenerationConfig:
    """The flags given, over the persona's `defaults`, over the built-in values."""
    return effective_config(defaults, **given_settings(args))


def reply_record(
    engine: Any, messages: list[Any], persona: Any, reply: str, system: str | None
) -> dict[str, Any]:
    """What `persona reply --json` prints about the reply the engine just gave."""
    stats, loaded = engine.last, engine.loaded
    return {
        "persona": persona.name if persona else None,
        "model": str(loaded.fingerprint),
        "model_id": loaded.model_id,
        "precision": loaded.precision,
        "prompt": engine.prompt_text(messages, persona, system=system),
        "reply": reply,
        "tokens": stats.new_tokens,
        "seconds": round(stats.seconds, 3),
        "finish_reason": stats.finish_reason,
    }


def run(args: argparse.Namespace) -> int:
    message = sys.stdin.read() if args.message == "-" else args.message
    if not message.strip():
        raise ConfigError(
            'the message is empty; pass the text to answer, e.g. persona reply "Hello"'
        )
    generation_config(args)  # validate the flags before the model loads

    if not args.local:
        from persona.serve.client import reply_via_server

        # a running `persona serve` answers without a model start, with the persona's defaults
        code = reply_via_server(args, message, given_settings(args))
        if code is not None:
            return code
        from persona.serve.warm import start_warm_server, warm_minutes

        minutes = warm_minutes(args.warm)
        if minutes is not None and start_warm_server(args, minutes) is not None:
            code = reply_via_server(args, message, given_settings(args))
            if code is not None:
                return code

    from persona.model import warmup

    warmup.begin(
        args.model, precision=args.precision, backend=args.backend
    )  # while torch is imported below

    from persona.cli.personas import resolve_persona
    from persona.engine.chat import ChatEngine
    from persona.engine.stops import StopScanner
    from persona.model.loader import load_chat_model

    persona, defaults = (
        (None, None) if args.no_persona else resolve_persona(args.persona, args.library)
    )
    config = generation_config(args, defaults)
    stops = StopScanner(stop_strings(defaults))  # the persona's own stop strings
    loaded = load_chat_model(
        args.model,
        precision=args.precision,
        backend=args.backend,
        gguf=args.gguf,
        device=args.device,
    )
    engine = ChatEngine(loaded)
    startup.ready()
    messages: list[Message] = [{"role": "user", "content": message}]
    if persona is not None:
        engine.check_persona(persona)
    if args.json:
        reply = engine.reply(messages, persona, config, system=args.system)
        reply = stops.push(reply) + stops.flush()
        record = reply_record(engine, messages, persona, reply, args.system)
        if stops.stopped:
            record["finish_reason"] = "stop"
        print(json.dumps(record, ensure_ascii=False))
        return 0
    for piece in engine.stream(messages, persona, config, system=args.system):
        sys.stdout.write(stops.push(piece))
        sys.stdout.flush()
        if stops.stopped:
            break
    sys.stdout.write(stops.flush() + "\n")
    return 0
