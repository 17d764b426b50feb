"""Train one persona end to end: dialogue -> examples -> trained prompt -> held-out evaluation.

Nothing is stored here: the caller puts the finished `TrainedPersona` into the library, so an
interrupted or failed run never leaves a half-made persona behind.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from persona.dialogue.encode import encode_examples
from persona.dialogue.examples import Example
from persona.dialogue.split import split_speaker
from persona.dialogue.types import Dialogue
from persona.errors import DialogueError, ModelError
from persona.model.loader import LoadedModel
from persona.prompt.deep import KVLayout, prefix_from_embeddings
from persona.prompt.init import initial_prompt
from persona.prompt.render import Renderer
from persona.prompt.softprompt import SoftPrompt
from persona.train.batching import pad_token_id
from persona.train.checkpoint import check_resumable, checkpoint_path, load_checkpoint
from persona.train.config import TrainConfig
from persona.train.evaluate import DEFAULT_EVAL_SAMPLE, prepare_evaluation, score
from persona.train.loop import train_loop
from persona.train.loss import decoder_and_head, shareable_cache
from persona.train.ranks import Ranks

MIN_EXAMPLES = 10


@dataclass
class TrainedPersona:
    prompt: SoftPrompt
    metrics: dict[str, Any]  # {"nll": {...}, "tokens": n, "examples": m}
    training: dict[str, Any]  # the training record stored with the version
    checkpoint: Path
    train_examples: list[Example] = field(default_factory=list)  # what the prompt learned from
    heldout_examples: list[Example] = field(default_factory=list)  # what it was judged on


def check_enough(examples: list[Example], speaker: str, source: str) -> None:
    if len(examples) < MIN_EXAMPLES:
        raise DialogueError(
            f"only {len(examples)} line{'s' if len(examples) != 1 else ''} by {speaker!r} in {source}; "
            f"training needs at least {MIN_EXAMPLES} (a few hundred train a convincing persona)"
        )


def written_examples(pairs: Sequence[tuple[str, str]], repeats: int) -> list[Example]:
    """Written example exchanges as training examples, each `repeats` times (never held out)."""
    return [
        Example(context=[{"role": "user", "content": question}], reply=reply, conversation=-1)
        for question, reply in pairs
        for _ in range(repeats)
    ]


def trained_system(config: TrainConfig, description: str | None) -> str | None:
    """The system message the prompt trains under: the description where the config asks for it."""
    text = (description or "").strip()
    return text if config.description_as_system and text else None


def deep_layout(loaded: LoadedModel) -> KVLayout:
    """The KV layout a deep prompt for `loaded` holds; ModelError where the model has no plain one."""
    layout = KVLayout.of_config(loaded.model.config)
    decoder, _ = decoder_and_head(loaded.model)
    if layout is None or shareable_cache(decoder) is None:  # hybrid, sliding, latent caches
        raise ModelError(
            f"{loaded.model_id} names no plain key/value cache layout (layers, kv heads, head size); "
            "train a soft persona for it (--kind soft)"
        )
    return layout


def train_persona(
    loaded: LoadedModel,
    dialogue: Dialogue,
    *,
    speaker: str | None,
    name: str,
    description: str | None = None,
    config: TrainConfig | None = None,
    heldout: Dialogue | None = None,
    resume: bool = False,
    progress: bool = True,
    on_step: Any = None,
    ranks: Ranks | None = None,
    eval_sample: int | None = DEFAULT_EVAL_SAMPLE,
    written: Sequence[tuple[str, str]] | None = None,
) -> TrainedPersona:
    """Train a soft prompt for `speaker`'s lines; evaluate on `heldout` if given, else on the validation split.

    Under a data-parallel launch every rank calls this alike (`ranks`); only rank 0 shows progress.
    """
    config = config or TrainConfig()
    began = time.perf_counter()
    split = split_speaker(
        dialogue,
        speaker,
        context_turns=config.context_turns,
        validation_fraction=config.validation_fraction,
        seed=config.seed,
        heldout=heldout,
    )
    speaker_name = split.speaker
    train, validation, test = split.train, split.validation, split.heldout
    check_enough([*train, *validation], speaker_name, dialogue.source)
    learned = [*train, *written_examples(written or [], config.example_repeats)]
    if not test:
        raise DialogueError(
            f"no held-out lines by {speaker_name!r} to evaluate on; use --validation-fraction above 0"
        )

    renderer = Renderer(loaded.tokenizer)
    limits = {"max_length": config.max_length, "max_reply_tokens": config.max_reply_tokens}
    system = trained_system(config, description)
    train_encoded = encode_examples(renderer, learned, name, system=system, **limits)
    validation_encoded = encode_examples(renderer, validation, name, system=system, **limits)
    held_out = prepare_evaluation(
        renderer,
        test,
        description=description,
        sample=eval_sample,
        persona_system=system,
        **limits,
    )  # fails now, not after training
    start, init = initial_prompt(
        loaded.model,
        loaded.tokenizer,
        config.num_virtual_tokens,
        method=config.init,
        description=description,
        seed=config.seed,
    )  # (N, D)
    layout = deep_layout(loaded) if config.kind == "deep" else None
    if layout is not None:  # a deep prompt starts as what the model computes for that start
        start = prefix_from_embeddings(loaded.model, start)  # (N, W)
    total_steps = config.total_steps(len(train_encoded))
    identity = {
        "source_sha256": dialogue.sha256,
        "speaker": speaker_name,
        "model": str(loaded.fingerprint),
        "description": description or "",
        "written_examples": [list(pair) for pair in written or []],
        "init": init,
        "config": config.to_dict(),
    }
    checkpoint_file = checkpoint_path(name)
    resume_from = None
    if resume:
        resume_from = load_checkpoint(checkpoint_file)
        check_resumable(resume_from, identity)
    pad_id = pad_token_id(loaded.tokenizer)
    result = train_loop(
        loaded.model,
        start,
        train_encoded,
        validation_encoded,
        config,
        pad_id=pad_id,
        total_steps=total_steps,
        identity=identity,
        checkpoint_file=checkpoint_file,
        resume_from=resume_from,
        progress=progress,
        on_step=on_step,
        description=f"training {name}",
        ranks=ranks,
        layout=layout,
    )
    metrics = score(
        loaded.model,
        result.prompt,
        held_out,
        pad_id=pad_id,
        batch_size=config.batch_size,
        ranks=ranks,
        progress=progress,
        layout=layout,
    )
    prompt = SoftPrompt(
        embeddings=result.prompt,
        name=name,
        description=description or "",
        fingerprint=loaded.fingerprint,
        init=init,
        base_model=loaded.model_id,
        system=system or "",
        kind=config.kind,
        layout=layout,
    )
    training = {
        "source": dialogue.source,
        "source_sha256": dialogue.sha256,
        "speaker": speaker_name,
        "steps": result.steps,
        "seconds": round(
            time.perf_counter() - began + (resume_from.seconds if resume_from else 0.0), 1
        ),
        "tokens_per_second": round(result.tokens_per_second, 1),
        "train_examples": len(train),
        "written_examples": len(written or []),
        "validation_examples": len(validation),
        "evaluated_on": heldout.source if heldout else "validation split",
        "final_loss": result.history[-1]["loss"] if result.history else None,
        "config": config.to_dict(),
    }
    return TrainedPersona(
        prompt=prompt,
        metrics=metrics,
        training=training,
        checkpoint=checkpoint_file,
        train_examples=train,
        heldout_examples=test,
    )
