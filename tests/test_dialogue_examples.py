"""Turning conversations into (context, reply) examples, the split by conversation, and rendering."""

from __future__ import annotations

import pytest

from persona.dialogue import (
    Conversation,
    Dialogue,
    Turn,
    build_examples,
    encode_examples,
    split_by_conversation,
    split_speaker,
)
from persona.dialogue.examples import Example
from persona.errors import ConfigError, DialogueError
from persona.prompt.inject import IGNORE_INDEX
from persona.prompt.render import Renderer


def dialogue_of(*conversations: list[tuple[str, str]]) -> Dialogue:
    convs = [Conversation([Turn(s, t) for s, t in conv]) for conv in conversations]
    return Dialogue(convs, source="test.txt", sha256="0" * 64)


def test_each_speaker_line_is_a_reply_with_the_turns_before_it_as_context() -> None:
    dialogue = dialogue_of(
        [("HAL", "h1"), ("JACK", "j1"), ("HAL", "h2"), ("JACK", "j2")], [("JACK", "j3")]
    )
    examples = build_examples(dialogue, "jack", context_turns=4)
    assert [e.reply for e in examples] == ["j1", "j2", "j3"]
    assert examples[0].context == [{"role": "user", "content": "h1"}]
    assert examples[1].context == [
        {"role": "user", "content": "h1"},
        {"role": "assistant", "content": "j1"},
        {"role": "user", "content": "h2"},
    ]
    assert examples[2].context == []  # a new conversation: nothing before it
    assert [e.conversation for e in examples] == [0, 0, 1]


def test_context_is_limited_to_context_turns_within_the_conversation() -> None:
    dialogue = dialogue_of([("A", "1"), ("B", "2"), ("A", "3"), ("B", "4"), ("A", "5"), ("B", "6")])
    (first, second, third) = build_examples(dialogue, "B", context_turns=2)
    assert third.context == [
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "5"},
    ]
    assert build_examples(dialogue, "B", context_turns=0)[2].context == []


def test_several_other_speakers_keep_their_names_and_adjacent_user_lines_merge() -> None:
    dialogue = dialogue_of([("HAL", "Jack!"), ("POINS", "Ned here."), ("FALSTAFF", "Peace, lads.")])
    (example,) = build_examples(dialogue, "Falstaff")
    assert example.context == [{"role": "user", "content": "HAL: Jack!\nPOINS: Ned here."}]


def test_unknown_speaker_lists_the_speakers_found_with_their_line_counts() -> None:
    dialogue = dialogue_of([("ALICE", "a"), ("BOB", "b"), ("ALICE", "c")])
    with pytest.raises(
        DialogueError,
        match=r"no lines by 'Carol' in test\.txt; speakers found \(lines\): ALICE \(2\), BOB \(1\)",
    ):
        build_examples(dialogue, "Carol")


def test_negative_context_turns_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"--context-turns must be 0 or more, got -1"):
        build_examples(dialogue_of([("A", "x")]), "A", context_turns=-1)


def test_split_is_by_whole_conversations_seeded_and_about_the_fraction() -> None:
    examples = [Example([], f"r{c}-{i}", conversation=c) for c in range(20) for i in range(5)]
    train, validation = split_by_conversation(examples, 0.1, seed=3)
    assert {e.conversation for e in train}.isdisjoint({e.conversation for e in validation})
    assert len(validation) == 10 and len(train) == 90
    assert split_by_conversation(examples, 0.1, seed=3) == (train, validation)
    assert split_by_conversation(examples, 0.1, seed=4)[1] != validation


def test_split_of_a_single_conversation_holds_out_its_last_examples() -> None:
    examples = [Example([], f"r{i}", conversation=0) for i in range(10)]
    train, validation = split_by_conversation(examples, 0.2)
    assert [e.reply for e in validation] == ["r8", "r9"] and len(train) == 8


def test_a_speakers_split_is_the_split_by_conversation_and_judges_on_a_heldout_log() -> None:
    talk = [
        [("HAL", f"h{c}"), ("JACK", f"j{c}"), ("HAL", f"h{c}b"), ("JACK", f"j{c}b")]
        for c in range(10)
    ]
    dialogue = dialogue_of(*talk)
    split = split_speaker(dialogue, "jack", context_turns=2, validation_fraction=0.2, seed=1)
    examples = build_examples(dialogue, "JACK", context_turns=2)
    assert split.speaker == "JACK"
    assert (split.train, split.validation) == split_by_conversation(examples, 0.2, seed=1)
    assert len(split.validation) == 4 and split.heldout == split.validation
    other = dialogue_of([("FALSTAFF", "well"), ("JACK", "more sack"), ("JACK", "and more")])
    judged = split_speaker(
        dialogue, "jack", context_turns=2, validation_fraction=0.2, seed=1, heldout=other
    )
    assert [example.reply for example in judged.heldout] == ["more sack", "and more"]
    assert (judged.train, judged.validation) == (split.train, split.validation)  # still the split
    with pytest.raises(DialogueError, match=r"no lines by 'JACK'"):
        split_speaker(dialogue, "JACK", context_turns=2, heldout=dialogue_of([("HAL", "x")]))


def test_split_fraction_out_of_range_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"--validation-fraction must be in \[0, 1\), got 1.5"):
        split_by_conversation([], 1.5)


def test_rendered_examples_label_only_the_reply_and_fit_the_length_limit(tiny) -> None:
    renderer = Renderer(tiny.tokenizer)
    long_context = [
        {"role": "user", "content": "hello there " * 40},
        {"role": "user", "content": "short"},
    ]
    example = Example(long_context, "I am fine, thank you.", conversation=0)
    (full,) = encode_examples(renderer, [example], persona=object(), max_length=10_000)
    (cut,) = encode_examples(renderer, [example], persona=object(), max_length=60)
    reply_ids = renderer.encode("I am fine, thank you.<|im_end|>")
    for encoded in (full, cut):
        assert [label for label in encoded.labels if label != IGNORE_INDEX] == reply_ids
        assert encoded.input_ids[-len(reply_ids) :] == reply_ids
    assert len(cut.input_ids) <= 60 < len(full.input_ids)
    assert "short" in tiny.tokenizer.decode(
        cut.input_ids
    )  # the oldest turn was dropped, not the newest


def test_the_reply_tokens_are_the_same_whatever_the_system_text(tiny) -> None:
    renderer = Renderer(tiny.tokenizer)
    example = Example(
        [{"role": "user", "content": "Who are you?"}], "To be, or not to be " * 20, conversation=0
    )
    plain, written = (
        encode_examples(renderer, [example], persona=None, max_reply_tokens=30)[0],
        encode_examples(
            renderer,
            [example],
            persona=None,
            system="A long written description " * 5,
            max_reply_tokens=30,
        )[0],
    )
    assert plain.num_labels == written.num_labels == 30
    assert [x for x in plain.labels if x != IGNORE_INDEX] == [
        x for x in written.labels if x != IGNORE_INDEX
    ]


def test_the_turn_before_the_reply_is_shortened_from_its_start_but_never_dropped(tiny) -> None:
    renderer = Renderer(tiny.tokenizer)
    turn = "What is the capital of France? " * 30 + "Say it now."
    example = Example([{"role": "user", "content": turn}], "Paris.", conversation=0)
    (bare,) = encode_examples(
        renderer, [example], persona=None, max_length=60
    )  # no persona: must still render
    text = tiny.tokenizer.decode(bare.input_ids)
    assert "Say it now." in text and "..." in text
    assert len(bare.input_ids) < len(
        encode_examples(renderer, [example], persona=None, max_length=10_000)[0].input_ids
    )
