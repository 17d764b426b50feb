"""`persona serve`: the personas as models behind OpenAI's HTTP API (see persona.serve)."""

from __future__ import annotations

import argparse
from pathlib import Path

from persona.engine.contract import DEFAULT_MAX_QUEUE

DEFAULT_PORT = 8400
VLLM_DTYPES = ("float32", "bfloat16", "float16")  # persona.engine.vllm.wire.WIRE_DTYPES, sans torch


def register(subparsers: argparse._SubParsersAction) -> None:
    from persona.cli.reply import add_precision_argument, add_strength_argument, positive_minutes

    parser = subparsers.add_parser(
        "serve",
        help="serve the personas over OpenAI's HTTP API (and to `persona reply`)",
        description="Load the model once and answer OpenAI-compatible requests "
        "(/v1/chat/completions, /v1/models; each persona is a model) on --host:--port, and "
        "`persona reply` through an owner-only socket in the data dir, until Ctrl-C. "
        "See docs/serving.md; with --backend vllm, vLLM servers compute (docs/vllm.md).",
        conflict_handler="resolve",  # serve's --backend takes vllm besides the shared choices
    )
    parser.add_argument(
        "--model",
        metavar="PATH",
        help="a local Hugging Face model directory (default: the embedded model, or $PERSONA_MODEL)",
    )
    add_precision_argument(parser)
    parser.add_argument(
        "--backend",
        choices=("torch", "llama", "vllm"),
        default="torch",
        help="torch (default); llama: llama.cpp runs the GGUF file (needs persona[llama]); "
        "vllm: vLLM computes (--vllm-url, else one started here), this process renders and serves",
    )
    parser.add_argument(
        "--vllm-url",
        action="append",
        metavar="URL[,URL...]",
        help="with --backend vllm: the vLLM servers (started with persona's KV connector on the "
        "same model, docs/vllm.md); each request goes to the one with the fewest in flight "
        "(default: start one here from .venv-vllm, stopped with the server)",
    )
    parser.add_argument(
        "--vllm-dtype",
        choices=VLLM_DTYPES,
        help="with --backend vllm: the --dtype the vLLM servers run in "
        "(default: float32, persona's own engine exactly)",
    )
    parser.add_argument(
        "--vllm-python",
        metavar="PATH",
        help="with --backend vllm and no --vllm-url: the Python of vLLM's own environment "
        "(default: .venv-vllm/bin/python beside the project, `make vllm`)",
    )
    parser.add_argument(
        "--vllm-args",
        metavar="FLAGS",
        help="with --backend vllm and no --vllm-url: more flags for that vLLM, one string "
        "(e.g. '--enforce-eager --max-model-len 2048')",
    )
    parser.add_argument(
        "--library",
        metavar="PATH",
        type=Path,
        help="the persona library file (default: in the data dir)",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: 127.0.0.1; any other needs an API key)",
    )
    parser.add_argument(
        "--port", type=_count(0, 65535), default=DEFAULT_PORT, help=f"default: {DEFAULT_PORT}"
    )
    parser.add_argument(
        "--api-key",
        metavar="KEY",
        help="require `Authorization: Bearer KEY` over TCP (default: $PERSONA_API_KEY, if set)",
    )
    parser.add_argument(
        "--scheduler",
        choices=("serial", "batch"),
        help="batch: replies decoded together (default); serial: one at a time",
    )
    parser.add_argument(
        "--max-queue",
        type=_count(0),
        default=DEFAULT_MAX_QUEUE,
        metavar="N",
        help="requests that may wait for a free row; more are refused with 429 "
        f"(default: {DEFAULT_MAX_QUEUE})",
    )
    parser.add_argument(
        "--max-tokens",
        type=_count(1),
        default=1024,
        metavar="N",
        help="the longest reply a request may ask for, and the length of one that names none "
        "(default: 1024)",
    )
    add_strength_argument(
        parser, "a request's `strength`, else the persona's own (`persona set`), else 1"
    )
    parser.add_argument(
        "--max-messages",
        type=_count(1),
        default=256,
        metavar="N",
        help="the most messages in one request (default: 256)",
    )
    parser.add_argument(
        "--max-body-bytes",
        type=_count(1),
        default=1 << 20,
        metavar="N",
        help="the largest request body; larger ones are refused with 413 (default: 1 MiB)",
    )
    parser.add_argument(
        "--save-conversations",
        action="store_true",
        help="save every conversation served in the library, as `persona chat` does "
        "(default: the server never writes to the library)",
    )
    parser.add_argument(
        "--idle-exit",
        type=positive_minutes,
        metavar="MINUTES",
        help="stop after this many minutes without a request (for a script: start it in the background and forget it)",
    )
    parser.set_defaults(func=run)


def _count(low: int, high: int | None = None):  # noqa: ANN202 - an argparse type
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low or (high is not None and value > high):
            bound = f"from {low} to {high}" if high is not None else f"{low} or more"
            raise argparse.ArgumentTypeError(f"must be a whole number {bound}, got {text!r}")
        return value

    return parse


def run(args: argparse.Namespace) -> int:
    from persona.cli import startup
    from persona.serve.run import serve, start

    running = start(args)  # the model loaded, the sockets bound
    startup.ready()
    return serve(running, args.idle_exit)
