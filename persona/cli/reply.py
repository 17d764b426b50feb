"""`persona reply`: one reply, non-interactive, for scripts."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from persona.cli import startup
from persona.errors import ConfigError


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
    parser.set_defaults(func=run)


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


def add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--temperature", type=float, default=0.7, help="0 is greedy (default: 0.7)")
    parser.add_argument(
        "--top-p", type=float, default=0.9, help="nucleus sampling mass (default: 0.9)"
    )
    parser.add_argument(
        "--top-k",
        type=int,
        default=50,
        help="sample among the k likeliest tokens, 0 for all (default: 50)",
    )
    parser.add_argument(
        "--repetition-penalty", type=float, default=1.1, help="1.0 disables (default: 1.1)"
    )
    parser.add_argument(
        "--max-tokens", type=int, default=256, help="longest reply in tokens (default: 256)"
    )
    parser.add_argument("--seed", type=int, help="seed for sampling, for a reproducible reply")


def generation_config(args: argparse.Namespace):
    from persona.engine.config import GenerationConfig

    return GenerationConfig(
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        repetition_penalty=args.repetition_penalty,
        max_new_tokens=args.max_tokens,
        seed=args.seed,
    )


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
    config = generation_config(args)  # validate before the model loads

    if not args.local:
        from persona.serve.client import reply_via_server

        code = reply_via_server(
            args, message, config
        )  # a running `persona serve` answers without a model start
        if code is not None:
            return code

    from persona.model import warmup

    warmup.begin(
        args.model, precision=args.precision, backend=args.backend
    )  # while torch is imported below

    from persona.cli.personas import resolve_persona
    from persona.engine.chat import ChatEngine
    from persona.model.loader import load_chat_model

    persona = None if args.no_persona else resolve_persona(args.persona, args.library)
    loaded = load_chat_model(
        args.model, precision=args.precision, backend=args.backend, gguf=args.gguf
    )
    engine = ChatEngine(loaded)
    startup.ready()
    messages = [{"role": "user", "content": message}]
    if persona is not None:
        persona.check_fits(loaded.fingerprint)
    if args.json:
        reply = engine.reply(messages, persona, config, system=args.system)
        print(
            json.dumps(
                reply_record(engine, messages, persona, reply, args.system), ensure_ascii=False
            )
        )
        return 0
    for piece in engine.stream(messages, persona, config, system=args.system):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0
