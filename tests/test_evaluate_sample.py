"""The held-out evaluation on the tiny model: a bounded, seeded sample of replies, the NLL with 95%
intervals, paired differences between conditions, and a progress bar."""

from __future__ import annotations

import random

import pytest
import torch

from persona.dialogue import Example
from persona.errors import ConfigError
from persona.prompt.render import Renderer
from persona.train.batching import pad_token_id
from persona.train.evaluate import (
    DEFAULT_EVAL_SAMPLE,
    example_nll,
    mean_nll,
    prepare_evaluation,
    score,
)
from persona.train.ranks import Ranks

WORDS = "thou art good sir what is the capital of France to be or not question witty myself".split()


def held_out_examples(replies: int, openers: int = 5) -> list[Example]:
    """`replies` distinct examples that answer a turn, after `openers` lines that open a conversation."""
    rng = random.Random(3)
    opening = [Example([], f"Hello {i}.", i) for i in range(openers)]
    answering = [
        Example(
            [{"role": "user", "content": f"Question {i}: " + " ".join(rng.choices(WORDS, k=6))}],
            f"Answer {i}: " + " ".join(rng.choices(WORDS, k=rng.randint(2, 12))),
            openers + i,
        )
        for i in range(replies)
    ]
    return opening + answering


@pytest.fixture(scope="module")
def soft_prompt(tiny) -> torch.Tensor:
    generator = torch.Generator().manual_seed(2)
    return torch.randn(4, tiny.fingerprint.hidden_size, generator=generator) * 0.5  # (4, D)


class Unlaunched(Ranks):
    """A rank of a data-parallel launch without the launch: the sum over the ranks is left to the test."""

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor


def is_in_order_within(part: list, whole: list) -> bool:
    rest = iter(whole)
    return all(any(item == other for other in rest) for item in part)


def test_the_default_sample_is_bounded_seeded_and_in_the_logs_order(tiny) -> None:
    renderer = Renderer(tiny.tokenizer)
    examples = held_out_examples(DEFAULT_EVAL_SAMPLE + 40)
    everything = prepare_evaluation(renderer, examples, description=None, sample=None)
    first = prepare_evaluation(renderer, examples, description=None)
    again = prepare_evaluation(renderer, examples, description=None)
    other = prepare_evaluation(renderer, examples, description=None, seed=1)

    assert everything.examples == everything.population == DEFAULT_EVAL_SAMPLE + 40
    assert first.examples == len(first.bare) == DEFAULT_EVAL_SAMPLE
    assert first.population == DEFAULT_EVAL_SAMPLE + 40  # the openers are not scorable
    assert first.bare == again.bare and first.with_prompt == again.with_prompt
    assert first.bare != other.bare
    assert is_in_order_within(first.bare, everything.bare)
    assert is_in_order_within(first.with_prompt, everything.with_prompt)


def test_every_condition_scores_the_same_sampled_replies(tiny) -> None:
    held_out = prepare_evaluation(
        Renderer(tiny.tokenizer), held_out_examples(30), description="a bard", sample=12
    )
    labelled = [
        [example.num_labels for example in encoded]
        for encoded in (held_out.bare, held_out.written, held_out.with_prompt)
    ]
    assert labelled[0] == labelled[1] == labelled[2] and len(labelled[0]) == 12


def test_a_sample_below_one_is_refused_quoting_it(tiny) -> None:
    with pytest.raises(ConfigError, match="sample=0"):
        prepare_evaluation(
            Renderer(tiny.tokenizer), held_out_examples(3), description=None, sample=0
        )


def test_the_nll_is_mean_nlls_with_an_interval_and_paired_differences(tiny, soft_prompt) -> None:
    held_out = prepare_evaluation(
        Renderer(tiny.tokenizer), held_out_examples(40), description="a bard", sample=None
    )
    pad_id = pad_token_id(tiny.tokenizer)
    result = score(tiny.model, soft_prompt, held_out, pad_id=pad_id, batch_size=8)

    expected = {
        "no_prompt": mean_nll(tiny.model, None, held_out.bare, pad_id=pad_id),
        "written_prompt": mean_nll(tiny.model, None, held_out.written, pad_id=pad_id),
        "persona": mean_nll(tiny.model, soft_prompt, held_out.with_prompt, pad_id=pad_id),
    }
    for key, (nll, tokens) in expected.items():
        assert result["nll"][key] == pytest.approx(nll, rel=1e-6)
        assert result["tokens"] == tokens
        low, high = result["interval"][key]
        assert low < result["nll"][key] < high
    assert result["examples"] == result["population"] == 40

    nll = result["nll"]
    for key, baseline in (
        ("persona_minus_no_prompt", "no_prompt"),
        ("persona_minus_written_prompt", "written_prompt"),
    ):
        mean, low, high = result["difference"][key]
        assert mean == pytest.approx(nll["persona"] - nll[baseline], rel=1e-9)
        assert low < mean < high


def test_the_intervals_agree_with_a_bootstrap_over_the_same_replies(tiny, soft_prompt) -> None:
    """The delta-method intervals against the reference they approximate: resampling the replies
    (the same draw for both conditions, so the difference is paired)."""
    held_out = prepare_evaluation(
        Renderer(tiny.tokenizer), held_out_examples(40), description=None, sample=None
    )
    pad_id = pad_token_id(tiny.tokenizer)
    result = score(tiny.model, soft_prompt, held_out, pad_id=pad_id)
    soft, counts = example_nll(tiny.model, soft_prompt, held_out.with_prompt, pad_id=pad_id)
    bare, _ = example_nll(tiny.model, None, held_out.bare, pad_id=pad_id)
    draws = torch.randint(0, 40, (4000, 40), generator=torch.Generator().manual_seed(0))
    tokens = counts[draws].sum(dim=1)  # (4000,)
    resampled = {
        "persona": soft[draws].sum(dim=1) / tokens,
        "no_prompt": bare[draws].sum(dim=1) / tokens,
    }  # (4000,) each
    resampled["persona_minus_no_prompt"] = resampled["persona"] - resampled["no_prompt"]
    reported = {
        **result["interval"],
        "persona_minus_no_prompt": result["difference"]["persona_minus_no_prompt"][1:],
    }
    for key, values in resampled.items():
        low, high = reported[key]
        reference = values.quantile(torch.tensor([0.025, 0.975], dtype=values.dtype)).tolist()
        assert reference == pytest.approx([low, high], abs=0.15 * (high - low)), key


def test_the_interval_narrows_with_more_replies(tiny, soft_prompt) -> None:
    renderer, pad_id = Renderer(tiny.tokenizer), pad_token_id(tiny.tokenizer)
    examples = held_out_examples(60)

    def widths(sample: int | None) -> list[float]:
        held_out = prepare_evaluation(renderer, examples, description=None, sample=sample)
        result = score(tiny.model, soft_prompt, held_out, pad_id=pad_id)
        assert (
            result["nll"]["written_prompt"] is None and result["interval"]["written_prompt"] is None
        )
        assert result["difference"]["persona_minus_written_prompt"] is None
        _, low, high = result["difference"]["persona_minus_no_prompt"]
        return [high - low] + [
            result["interval"][key][1] - result["interval"][key][0]
            for key in ("no_prompt", "persona")
        ]

    few, many = widths(8), widths(None)
    assert all(wide > narrow for wide, narrow in zip(few, many, strict=True))


def test_each_rank_scores_its_share_and_the_shares_add_up_to_the_whole(tiny, soft_prompt) -> None:
    held_out = prepare_evaluation(
        Renderer(tiny.tokenizer), held_out_examples(21), description=None, sample=None
    )
    settings = {"pad_id": pad_token_id(tiny.tokenizer), "batch_size": 4}
    whole_sums, whole_counts = example_nll(
        tiny.model, soft_prompt, held_out.with_prompt, **settings
    )
    shares = [
        example_nll(
            tiny.model, soft_prompt, held_out.with_prompt, ranks=Unlaunched(rank, 2), **settings
        )
        for rank in (0, 1)
    ]
    assert all(0 < int((sums > 0).sum()) < 21 for sums, _ in shares)  # each rank did a part
    torch.testing.assert_close(shares[0][0] + shares[1][0], whole_sums)
    assert torch.equal(shares[0][1] + shares[1][1], whole_counts)
    assert int(whole_counts.sum()) == sum(example.num_labels for example in held_out.with_prompt)


def test_progress_is_one_bar_on_stderr_from_the_first_rank_alone(tiny, soft_prompt, capsys) -> None:
    held_out = prepare_evaluation(
        Renderer(tiny.tokenizer), held_out_examples(10), description="a bard", sample=None
    )
    pad_id = pad_token_id(tiny.tokenizer)
    score(tiny.model, soft_prompt, held_out, pad_id=pad_id, batch_size=4)
    assert capsys.readouterr() == ("", "")

    score(tiny.model, soft_prompt, held_out, pad_id=pad_id, batch_size=4, progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "evaluating: " in captured.err and "9/9" in captured.err  # 3 batches x 3 conditions

    score(
        tiny.model,
        soft_prompt,
        held_out,
        pad_id=pad_id,
        batch_size=4,
        ranks=Unlaunched(1, 2),
        progress=True,
    )
    assert capsys.readouterr() == ("", "")


def test_one_reply_has_an_nll_but_no_interval(tiny, soft_prompt) -> None:
    held_out = prepare_evaluation(
        Renderer(tiny.tokenizer), held_out_examples(1), description="a bard"
    )
    result = score(tiny.model, soft_prompt, held_out, pad_id=pad_token_id(tiny.tokenizer))
    assert all(isinstance(value, float) for value in result["nll"].values())
    assert set(result["interval"].values()) == {None}
    assert set(result["difference"].values()) == {None}
    assert result["examples"] == result["population"] == 1
