"""`measure_style`: how often each condition's replies read like the speaker, and who they say they are.

1. The classifier learns the speaker's training lines against the bare model's replies to a
   bounded sample of training contexts (`negatives`).
2. A seeded sample of held-out contexts is answered under each condition (no prompt, the written
   description, the soft prompt) with the chat's sampling defaults; each condition gets the share
   of replies attributed to the speaker (Wilson 95% interval), the mean length in tokens and
   distinct-2, so that empty or looping replies cannot win on share alone.
3. The measure checks itself: the speaker's real held-out lines must score high, the bare model's
   replies to the same held-out contexts (the no-prompt condition) low.
4. Each condition answers the identity questions greedily; an answer counts when it names the
   character.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from tqdm import tqdm

from persona.dialogue.examples import Example
from persona.dialogue.split import seeded_sample as sample
from persona.engine.chat import ChatEngine
from persona.engine.config import GenerationConfig
from persona.errors import ConfigError
from persona.prompt.softprompt import SoftPrompt
from persona.style.classifier import StyleClassifier
from persona.style.data import with_context
from persona.style.generate import NO_PROMPT, Condition, Reply, conditions_for, generate_replies
from persona.style.identity import IDENTITY_QUESTIONS, character_name, names_character
from persona.style.stats import distinct_n, wilson_interval

SAMPLES_KEPT = 3  # replies per condition kept in the report, to read


@dataclass
class StyleConfig:
    sample: int | None = 32  # held-out contexts answered per condition; None: all of them
    # bare replies to training contexts the classifier learns from; None: twice the sample,
    # between 16 and 64 (a small sample is a quick look, and pays for a smaller classifier)
    negatives: int | None = None
    max_positives: int = 2000  # the speaker's training lines the classifier learns from, at most
    seed: int = 0  # the samples and the sampling
    max_new_tokens: int = 128  # per reply; the chat's other sampling defaults apply
    identity_tokens: int = 48  # per greedy answer to an identity question
    batch_size: int = 8  # conversations decoded together

    def __post_init__(self) -> None:
        if self.sample is not None and (isinstance(self.sample, bool) or self.sample < 1):
            raise ConfigError(f"sample={self.sample!r} must be at least 1, or None for all")
        if self.negatives is None:
            self.negatives = 64 if self.sample is None else min(64, max(16, 2 * self.sample))
        for name in ("negatives", "max_positives"):
            if getattr(self, name) < 2:
                raise ConfigError(f"{name}={getattr(self, name)!r} must be at least 2")
        for name in ("max_new_tokens", "identity_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)!r} must be at least 1")

    def sampling(self) -> GenerationConfig:
        """The chat's defaults with this seed and reply length."""
        return GenerationConfig(max_new_tokens=self.max_new_tokens, seed=self.seed)

    def greedy(self) -> GenerationConfig:
        return GenerationConfig(temperature=0.0, max_new_tokens=self.identity_tokens)


@dataclass
class IdentityAnswer:
    question: str
    answer: str
    named: bool  # the answer names the character


@dataclass
class StyleReport:
    """Everything `measure_style` found; `to_dict` is its JSON form."""

    character: str  # the name the identity answers are checked for
    conditions: list[str]  # in the order measured
    share: dict[str, tuple[float, float, float]]  # condition -> (share, low, high) attributed
    mean_tokens: dict[str, float]  # condition -> mean reply length in tokens
    distinct2: dict[str, float]  # condition -> distinct bigrams / bigrams over its replies
    real_lines_share: tuple[float, float, float]  # the speaker's real held-out lines: must be high
    real_lines_tokens: float  # mean length of the real held-out lines, for reference
    real_lines_distinct2: float
    identity: dict[str, list[IdentityAnswer]]  # condition -> one answer per identity question
    sample_size: int  # held-out contexts answered per condition
    heldout_size: int  # held-out lines that answer something, sampled from
    positives: int  # the speaker's training lines the classifier learned from
    negatives: int  # bare replies it learned against
    samples: dict[str, list[str]] = field(default_factory=dict)  # a few replies per condition

    @property
    def bare_share(self) -> tuple[float, float, float]:
        """The bare model's replies to the held-out contexts: the measure's check, must be low."""
        return self.share[NO_PROMPT]

    def named(self, condition: str) -> int:
        """How many identity answers of `condition` name the character."""
        return sum(answer.named for answer in self.identity.get(condition, []))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> StyleReport:
        values = {k: v for k, v in record.items() if k != "bare_share"}  # older reports held it
        values["share"] = {name: tuple(value) for name, value in values["share"].items()}
        values["real_lines_share"] = tuple(values["real_lines_share"])
        values["identity"] = {
            name: [IdentityAnswer(**answer) for answer in answers]
            for name, answers in values["identity"].items()
        }
        return cls(**values)


@dataclass
class Answered:
    """One condition's replies to the held-out sample and to the identity questions, scored."""

    share: tuple[float, float, float]
    mean_tokens: float
    distinct2: float
    identity: list[IdentityAnswer]
    samples: list[str]


class StyleJudge:
    """The classifier and the held-out sample of one speaker, to score any number of conditions.

    Building it generates the bare model's replies to `negatives` training contexts (the
    classifier's negatives); `answer` then has a condition (on any engine: a persona, a written
    prompt, a changed model) reply to the same held-out contexts and identity questions.
    """

    def __init__(
        self,
        engine: ChatEngine,
        *,
        speaker: str,
        train: Sequence[Example],
        heldout: Sequence[Example],
        config: StyleConfig | None = None,
        bar: tqdm | None = None,
    ) -> None:
        self.config = config or StyleConfig()
        self.character = character_name(speaker)
        self.bar = bar
        seed = self.config.seed
        positives = [example.reply for example in sample(train, self.config.max_positives, seed)]
        negative_contexts = [
            example.context
            for example in sample(with_context(train, "training"), self.config.negatives, seed)
        ]
        answerable = with_context(heldout, "held-out")
        self.heldout_size = len(answerable)
        self.chosen = sample(answerable, self.config.sample, seed)
        bare = Condition(NO_PROMPT)
        negatives = [r.text for r in self._replies(engine, negative_contexts, bare, "negatives")]
        self.classifier = StyleClassifier(positives, negatives)
        real = [example.reply for example in self.chosen]
        self.real_lines_share = _share(self.classifier, real)
        self.real_lines_tokens = _mean([len(engine.renderer.encode(line)) for line in real])
        self.real_lines_distinct2 = distinct_n(real)

    @staticmethod
    def replies_needed(config: StyleConfig, heldout: int, conditions: int) -> int:
        """Generations for `conditions` conditions on `heldout` answerable lines, negatives included."""
        chosen = heldout if config.sample is None else min(config.sample, heldout)
        assert config.negatives is not None  # StyleConfig.__post_init__ fills it in
        return config.negatives + conditions * (chosen + len(IDENTITY_QUESTIONS))

    def answer(self, engine: ChatEngine, condition: Condition) -> Answered:
        contexts = [example.context for example in self.chosen]
        got = self._replies(engine, contexts, condition, condition.name)
        questions = [[{"role": "user", "content": q}] for q in IDENTITY_QUESTIONS]
        answers = self._replies(engine, questions, condition, f"identity {condition.name}")
        texts = [reply.text for reply in got]
        return Answered(
            share=_share(self.classifier, texts),
            mean_tokens=_mean([reply.tokens for reply in got]),
            distinct2=distinct_n(texts),
            identity=[
                IdentityAnswer(q, a.text, names_character(a.text, self.character))
                for q, a in zip(IDENTITY_QUESTIONS, answers, strict=True)
            ],
            samples=texts[:SAMPLES_KEPT],
        )

    def _replies(
        self, engine: ChatEngine, contexts: Sequence[Any], condition: Condition, what: str
    ) -> list[Reply]:
        if self.bar is not None:
            self.bar.set_description(f"style: {what}")
        generation = self.config.greedy() if what.startswith("identity") else self.config.sampling()
        return generate_replies(
            engine,
            contexts,
            condition,
            generation,
            batch_size=self.config.batch_size,
            bar=self.bar,
        )


def measure_style(
    engine: ChatEngine,
    persona: SoftPrompt,
    *,
    speaker: str,
    train: Sequence[Example],
    heldout: Sequence[Example],
    description: str | None = None,
    config: StyleConfig | None = None,
    progress: bool = True,
) -> StyleReport:
    """Measure `persona` (and its written `description`) against the bare model; see the module doc."""
    config = config or StyleConfig()
    engine.check_persona(persona)
    conditions = conditions_for(persona, description)
    total = StyleJudge.replies_needed(
        config, len([e for e in heldout if e.context]), len(conditions)
    )
    with tqdm(
        total=total, desc="style", unit="reply", file=sys.stderr, disable=not progress
    ) as bar:
        judge = StyleJudge(
            engine, speaker=speaker, train=train, heldout=heldout, config=config, bar=bar
        )
        answered = {c.name: judge.answer(engine, c) for c in conditions}
    return StyleReport(
        character=judge.character,
        conditions=[c.name for c in conditions],
        share={name: got.share for name, got in answered.items()},
        mean_tokens={name: got.mean_tokens for name, got in answered.items()},
        distinct2={name: got.distinct2 for name, got in answered.items()},
        real_lines_share=judge.real_lines_share,
        real_lines_tokens=judge.real_lines_tokens,
        real_lines_distinct2=judge.real_lines_distinct2,
        identity={name: got.identity for name, got in answered.items()},
        sample_size=len(judge.chosen),
        heldout_size=judge.heldout_size,
        positives=judge.classifier.positives,
        negatives=judge.classifier.negatives,
        samples={name: got.samples for name, got in answered.items()},
    )


def share_text(value: Sequence[float]) -> str:
    """'38% [22%, 56%]': a share and its 95% interval, as the benchmark and `persona show` print it."""
    share, low, high = value
    return f"{share:.0%} [{low:.0%}, {high:.0%}]"


def _share(classifier: StyleClassifier, texts: Sequence[str]) -> tuple[float, float, float]:
    """(share attributed to the speaker, Wilson low, Wilson high)."""
    hits = sum(classifier.attributed(texts))
    low, high = wilson_interval(hits, len(texts))
    return hits / len(texts), low, high


def _mean(values: Sequence[int]) -> float:
    return sum(values) / len(values) if values else 0.0
