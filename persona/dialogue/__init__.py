"""Dialogue logs -> conversations -> (context, reply) examples for one speaker, split by conversation."""

from persona.dialogue.columns import Columns
from persona.dialogue.encode import EncodedExample, encode_example, encode_examples
from persona.dialogue.examples import Example, build_examples, resolve_speaker
from persona.dialogue.reader import FORMATS, read_dialogue
from persona.dialogue.split import SpeakerSplit, split_by_conversation, split_speaker
from persona.dialogue.types import Conversation, Dialogue, Turn

__all__ = [
    "FORMATS",
    "Columns",
    "Conversation",
    "Dialogue",
    "EncodedExample",
    "Example",
    "SpeakerSplit",
    "Turn",
    "build_examples",
    "encode_example",
    "encode_examples",
    "read_dialogue",
    "resolve_speaker",
    "split_by_conversation",
    "split_speaker",
]
