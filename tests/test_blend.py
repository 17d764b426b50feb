"""`persona blend`: the arithmetic of both methods, every refusal in one line, the stored recipe,
and a blended persona speaking through the real engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from persona.cli.main import main
from persona.errors import ConfigError, PromptMismatchError
from persona.library import open_library
from persona.model.fingerprint import Fingerprint
from persona.prompt.blend import blend_prompts, concat, interpolate
from persona.prompt.deep import KVLayout, prefilled_cache, prefix_from_embeddings, split_prefix
from persona.prompt.softprompt import SoftPrompt
from tests.library_helpers import FINGERPRINT, make_prompt

CAP = 512
TINY_LAYOUT = KVLayout(layers=2, kv_heads=2, head_dim=8)  # the tiny Llama's KV cache


def make_deep(seed: int, tokens: int = 5, layout: KVLayout = TINY_LAYOUT, name: str = "deep"):
    """A random deep prompt (N, W) of `layout` for the model FINGERPRINT names."""
    generator = torch.Generator().manual_seed(seed)
    return SoftPrompt(
        torch.randn(tokens, layout.width, generator=generator),  # (N, W)
        name=name,
        fingerprint=FINGERPRINT,
        kind="deep",
        layout=layout,
    )


def blend(prompts, method="interpolate", **options):
    return blend_prompts(
        prompts, method=method, name="mix", description="a mix", max_virtual_tokens=CAP, **options
    )


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 1
    assert err.startswith("persona: error: ") and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, err


# ---- the arithmetic ----------------------------------------------------------------------------


def test_interpolation_is_the_weighted_sum_with_weights_normalised():
    a, b = make_prompt(seed=1, name="a"), make_prompt(seed=2, name="b")
    mixed = blend([a, b], weights=[7, 3])
    expected = 0.7 * a.embeddings + 0.3 * b.embeddings  # (5, 32)
    torch.testing.assert_close(mixed.prompt.embeddings, expected, rtol=0, atol=1e-6)
    assert mixed.weights == pytest.approx([0.7, 0.3])
    assert mixed.prompt.num_virtual_tokens == 5 and mixed.prompt.init == "blend"
    assert mixed.prompt.fingerprint == FINGERPRINT


def test_interpolation_without_weights_is_the_mean_of_any_number_of_prompts():
    prompts = [make_prompt(seed=s, name=f"p{s}") for s in (1, 2, 3)]
    mixed = blend(prompts)
    expected = torch.stack([p.embeddings for p in prompts]).mean(dim=0)  # (5, 32)
    torch.testing.assert_close(mixed.prompt.embeddings, expected, rtol=0, atol=1e-6)
    assert mixed.weights == pytest.approx([1 / 3] * 3)


def test_concat_stacks_the_rows_in_the_order_given():
    a = make_prompt(seed=1, tokens=3, name="a")
    b = make_prompt(seed=2, tokens=6, name="b")
    mixed = blend([b, a], method="concat")
    assert mixed.prompt.embeddings.shape == (9, 32)
    assert torch.equal(mixed.prompt.embeddings[:6], b.embeddings)
    assert torch.equal(mixed.prompt.embeddings[6:], a.embeddings)
    assert mixed.weights == [None, None]


def test_the_pure_functions_agree_with_torch():
    a, b = torch.randn(4, 8), torch.randn(4, 8)
    torch.testing.assert_close(interpolate([a, b], [0.25, 0.75]), 0.25 * a + 0.75 * b)
    assert torch.equal(concat([a, b]), torch.cat([a, b]))


def test_the_first_written_system_message_is_kept():
    a, b, c = (make_prompt(seed=s, name=n) for s, n in ((1, "a"), (2, "b"), (3, "c")))
    b.system, c.system = "You are B.", "You are C."
    assert blend([a, b, c]).prompt.system == "You are B."
    assert blend([a, a]).prompt.system == ""


def test_deep_prompts_interpolate_as_their_keys_and_values_do():
    a, b = make_deep(1, name="a"), make_deep(2, name="b")
    mixed = blend([a, b], weights=[1, 3]).prompt
    assert (mixed.kind, mixed.layout, mixed.fingerprint) == ("deep", TINY_LAYOUT, FINGERPRINT)
    for (keys, values), (a_keys, a_values), (b_keys, b_values) in zip(
        split_prefix(mixed.embeddings, TINY_LAYOUT),
        split_prefix(a.embeddings, TINY_LAYOUT),
        split_prefix(b.embeddings, TINY_LAYOUT),
        strict=True,
    ):  # (1, H, N, d) each, every layer
        torch.testing.assert_close(keys, 0.25 * a_keys + 0.75 * b_keys, rtol=0, atol=1e-6)
        torch.testing.assert_close(values, 0.25 * a_values + 0.75 * b_values, rtol=0, atol=1e-6)


def test_concatenated_deep_prompts_are_the_sources_caches_one_after_the_other():
    """A deep prompt's rows are positions: stacking rows stacks every layer's keys and values."""
    a, b = make_deep(1, tokens=3, name="a"), make_deep(2, tokens=4, name="b")
    mixed = blend([a, b], method="concat").prompt
    assert (mixed.kind, mixed.layout, mixed.num_virtual_tokens) == ("deep", TINY_LAYOUT, 7)
    for joined, first, second in zip(
        split_prefix(mixed.embeddings, TINY_LAYOUT),
        split_prefix(a.embeddings, TINY_LAYOUT),
        split_prefix(b.embeddings, TINY_LAYOUT),
        strict=True,
    ):
        for part in (0, 1):  # keys, then values: (1, H, 3+4, d)
            assert torch.equal(joined[part], torch.cat([first[part], second[part]], dim=2))


def test_a_concatenated_deep_blend_runs_as_the_joined_caches_do(tiny):
    """In the engine, the blend speaks as the model does after both sources' caches, joined."""
    from transformers import DynamicCache

    from persona.engine.chat import ChatEngine
    from persona.model.calling import cache_argument_name

    generator = torch.Generator().manual_seed(6)
    layout = KVLayout.of_config(tiny.model.config)
    sources = [
        SoftPrompt(
            prefix_from_embeddings(
                tiny.model, torch.randn(n, tiny.fingerprint.hidden_size, generator=generator)
            ),  # (n, W)
            name=name,
            fingerprint=tiny.fingerprint,
            kind="deep",
            layout=layout,
        )
        for name, n in (("ada", 3), ("bob", 2))
    ]
    mixed = blend(sources, method="concat").prompt
    ids = tiny.tokenizer("Hello there, how are you").input_ids
    joined = DynamicCache(config=tiny.model.config)
    caches = [prefilled_cache(tiny.model, p.embeddings, layout, 1) for p in sources]
    for layer in range(layout.layers):
        joined.update(
            torch.cat([c.layers[layer].keys for c in caches], dim=2),  # (1, H, 3+2, d)
            torch.cat([c.layers[layer].values for c in caches], dim=2),
            layer,
        )
    backend = ChatEngine(tiny).backend
    ours = backend.prefill(backend.new_cache(), ids, mixed.embeddings, kind="deep")  # (V,)
    with torch.no_grad():
        theirs = tiny.model(
            input_ids=torch.tensor([ids]), **{cache_argument_name(tiny.model): joined}
        ).logits  # (1, T, V)
    torch.testing.assert_close(ours, theirs[0, -1], rtol=0, atol=1e-6)


# ---- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompts", "method", "options", "error", "fragments"),
    [
        pytest.param(
            [make_prompt(1, tokens=5, name="a"), make_prompt(2, tokens=8, name="b")],
            "interpolate",
            {},
            ConfigError,
            ("'a' has 5 virtual tokens", "'b' 8", "--method concat"),
            id="lengths-differ",
        ),
        pytest.param(
            [make_prompt(1, name="a"), make_prompt(2, name="b")],
            "concat",
            {"weights": [0.5, 0.5]},
            ConfigError,
            ("--weights apply to --method interpolate only",),
            id="weights-with-concat",
        ),
        pytest.param(
            [make_prompt(1, name="a"), make_prompt(2, name="b")],
            "interpolate",
            {"weights": [1.0]},
            ConfigError,
            ("1 weight(s) for 2 personas",),
            id="weight-count",
        ),
        pytest.param(
            [make_prompt(1, name="a"), make_prompt(2, name="b")],
            "interpolate",
            {"weights": [1.0, 0.0]},
            ConfigError,
            ("positive", "0.0"),
            id="zero-weight",
        ),
        pytest.param(
            [make_prompt(1, name="a"), make_prompt(2, name="b")],
            "interpolate",
            {"weights": [1.0, float("nan")]},
            ConfigError,
            ("positive", "nan"),
            id="nan-weight",
        ),
        pytest.param(
            [make_prompt(1, tokens=300, name="a"), make_prompt(2, tokens=300, name="b")],
            "concat",
            {},
            ConfigError,
            ("600 virtual tokens", f"the {CAP}"),
            id="over-the-cap",
        ),
        pytest.param(
            [make_prompt(1, name="a")],
            "interpolate",
            {},
            ConfigError,
            ("at least two personas",),
            id="one-source",
        ),
        pytest.param(
            [make_prompt(1, name="a"), make_prompt(2, name="b")],
            "average",
            {},
            ConfigError,
            ("interpolate, concat", "'average'"),
            id="unknown-method",
        ),
    ],
)
def test_each_refusal_says_what_is_wrong(prompts, method, options, error, fragments):
    with pytest.raises(error) as caught:
        blend(prompts, method, **options)
    message = str(caught.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_prompts_of_different_models_are_refused_for_either_method():
    other = Fingerprint("LlamaForCausalLM", 32, 300, "fedcba9876543210")
    a = make_prompt(1, name="a")
    b = SoftPrompt(torch.randn(5, 32), name="b", fingerprint=other)
    for method in ("interpolate", "concat"):
        with pytest.raises(PromptMismatchError, match="blend only personas of one model") as caught:
            blend([a, b], method)
        assert str(FINGERPRINT) in str(caught.value) and str(other) in str(caught.value)


@pytest.mark.parametrize("method", ["interpolate", "concat"])
def test_soft_and_deep_prompts_never_mix(method):
    soft, deep = make_prompt(1, name="soft"), make_deep(2, name="deep")
    for prompts in ([soft, deep], [deep, soft]):
        with pytest.raises(PromptMismatchError) as caught:
            blend(prompts, method)
        message = str(caught.value)
        assert "\n" not in message and "blend only personas of one kind" in message
        assert "'soft' is a soft prompt" in message or "'deep' is a deep prompt" in message


def test_deep_prompts_of_two_layouts_are_refused_even_of_one_width():
    other = KVLayout(layers=1, kv_heads=4, head_dim=8)  # 64 columns, as TINY_LAYOUT
    a, b = make_deep(1, name="a"), make_deep(2, layout=other, name="b")
    assert a.width == b.width
    for method in ("interpolate", "concat"):
        with pytest.raises(PromptMismatchError) as caught:
            blend([a, b], method)
        message = str(caught.value)
        assert "\n" not in message
        assert "'b' holds keys and values for 1x4x8" in message and "'a' for 2x2x8" in message


# ---- the command, on a library with the starters ------------------------------------------------


@pytest.fixture
def starters_library(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("PERSONA_NO_STARTERS")
    path = tmp_path / "library.db"
    open_library(path).close()  # a new library gets the starters
    return path


def test_blend_stores_a_persona_with_its_recipe(capsys, starters_library):
    lib = str(starters_library)
    code, out, _ = run(
        capsys,
        "blend",
        "falstaff",
        "juliet",
        "--weights",
        "0.7,0.3",
        "--name",
        "fj",
        "--library",
        lib,
    )
    assert code == 0
    assert out == (
        "stored persona 'fj' version 1: interpolate of falstaff v1 (0.70), juliet v1 (0.30) (20x576 deep)\n"
    )
    library = open_library(starters_library)
    try:
        falstaff, juliet = library.get_prompt("falstaff"), library.get_prompt("juliet")
        stored = library.get_prompt("fj")
        info = library.get_persona("fj")
    finally:
        library.close()
    expected = 0.7 * falstaff.embeddings + 0.3 * juliet.embeddings  # (20, W): deep starters
    torch.testing.assert_close(
        stored.embeddings, expected, rtol=1e-6, atol=1e-6
    )  # float32 rounding
    assert stored.fingerprint == falstaff.fingerprint
    assert info.description == "A blend of falstaff and juliet"
    record = info.versions[0].training
    assert record == {
        "blend": {
            "method": "interpolate",
            "sources": [
                {
                    "name": "falstaff",
                    "version": 1,
                    "sha256": falstaff.sha256,
                    "weight": pytest.approx(0.7),
                    "virtual_tokens": 20,
                },
                {
                    "name": "juliet",
                    "version": 1,
                    "sha256": juliet.sha256,
                    "weight": pytest.approx(0.3),
                    "virtual_tokens": 20,
                },
            ],
        }
    }
    assert info.versions[0].init == "blend"

    code, out, _ = run(capsys, "show", "fj", "--library", lib)
    assert code == 0
    assert "  blended:     interpolate of falstaff v1 (0.70), juliet v1 (0.30)\n" in out
    assert "trained on" not in out


def test_blending_into_an_existing_name_adds_a_version(capsys, starters_library):
    lib = str(starters_library)
    assert run(capsys, "blend", "hamlet", "lear", "--name", "hl", "--library", lib)[0] == 0
    code, out, _ = run(
        capsys, "blend", "lear", "hamlet", "rosalind", "--method", "concat", "--name", "hl",
        "--library", lib,
    )  # fmt: skip
    assert code == 0
    assert out.startswith("stored persona 'hl' version 2: concat of lear v1 (20 tokens), ")
    code, out, _ = run(capsys, "show", "hl", "--json", "--library", lib)
    shown = json.loads(out)
    assert shown["active_version"] == 2
    assert [v["num_virtual_tokens"] for v in shown["versions"]] == [20, 60]
    assert shown["description"] == "A blend of hamlet and lear"  # an existing persona keeps its own
    sources = shown["versions"][1]["training"]["blend"]["sources"]
    assert [s["name"] for s in sources] == ["lear", "hamlet", "rosalind"]
    assert all(s["weight"] is None for s in sources)

    code, _, _ = run(
        capsys, "blend", "juliet", "rosalind", "--name", "hl", "--description", "Two heroines",
        "--library", lib,
    )  # fmt: skip
    assert code == 0
    assert json.loads(run(capsys, "show", "hl", "--json", "--library", lib)[1])["description"] == (
        "Two heroines"
    )


def test_the_command_refuses_in_one_line(capsys, starters_library):
    lib = str(starters_library)
    code, _, err = run(capsys, "blend", "falstaff", "julet", "--name", "x", "--library", lib)
    assert_one_line_error(code, err, "no persona named 'julet'; did you mean 'juliet'?")
    run(
        capsys,
        "blend",
        "falstaff",
        "juliet",
        "--method",
        "concat",
        "--name",
        "long",
        "--library",
        lib,
    )
    code, _, err = run(capsys, "blend", "hamlet", "long", "--name", "x", "--library", lib)
    assert_one_line_error(code, err, "'hamlet' has 20 virtual tokens, 'long' 40", "--method concat")
    code, _, err = run(
        capsys, "blend", "hamlet", "lear", "--method", "concat", "--weights", "1,2", "--name", "x",
        "--library", lib,
    )  # fmt: skip
    assert_one_line_error(code, err, "--weights apply to --method interpolate only")
    with pytest.raises(SystemExit) as usage:
        main(["blend", "hamlet", "lear", "--weights", "1,x", "--name", "x", "--library", lib])
    assert usage.value.code == 2
    assert "0.7,0.3" in capsys.readouterr().err

    library = open_library(starters_library)
    try:
        library.add_version("stranger", make_prompt(seed=1, tokens=20, width=32))
    finally:
        library.close()
    code, _, err = run(capsys, "blend", "hamlet", "stranger", "--name", "x", "--library", lib)
    assert_one_line_error(code, err, "'stranger' was trained for model", "one model")
    assert not open_library(starters_library).has_persona("x")


# ---- a blend speaks through the real engine ------------------------------------------------------


def reply_json(capsys, tiny_model_dir: Path, persona: str) -> dict:
    code, out, err = run(
        capsys, "reply", "--model", str(tiny_model_dir), "--persona", persona, "--local",
        "--temperature", "0", "--max-tokens", "8", "--json", "hello there",
    )  # fmt: skip
    assert code == 0, err
    return json.loads(out)


@pytest.mark.parametrize("method", ["interpolate", "concat"])
def test_a_blend_replies_as_its_blended_prompt_does(capsys, tmp_path, tiny, tiny_model_dir, method):
    generator = torch.Generator().manual_seed(3)
    sources = [
        SoftPrompt(
            torch.randn(4, tiny.fingerprint.hidden_size, generator=generator),  # (4, D)
            name=name,
            fingerprint=tiny.fingerprint,
        )
        for name in ("ada", "bob")
    ]
    library = open_library()
    try:
        for prompt in sources:
            library.add_version(prompt.name, prompt)
    finally:
        library.close()
    assert run(capsys, "blend", "ada", "bob", "--method", method, "--name", "mix")[0] == 0

    a, b = (p.embeddings for p in sources)
    expected = 0.5 * a + 0.5 * b if method == "interpolate" else torch.cat([a, b])  # (N, D)
    file = tmp_path / "expected.safetensors"
    SoftPrompt(expected, name="expected", fingerprint=tiny.fingerprint).save(file)

    blended = reply_json(capsys, tiny_model_dir, "mix")
    assert blended["reply"]
    assert blended["reply"] == reply_json(capsys, tiny_model_dir, str(file))["reply"]


def test_the_command_blends_deep_personas_into_a_deep_one(capsys):
    library = open_library()
    try:
        for prompt in (make_deep(1, tokens=3, name="ada"), make_deep(2, tokens=4, name="bob")):
            library.add_version(prompt.name, prompt)
        library.add_version("cy", make_prompt(3, name="cy"))
    finally:
        library.close()
    code, out, err = run(capsys, "blend", "ada", "bob", "--method", "concat", "--name", "mix")
    assert code == 0, err
    assert "concat of ada v1 (3 tokens), bob v1 (4 tokens)" in out and "(7x32 deep)" in out
    library = open_library()
    try:
        stored = library.get_prompt("mix")
    finally:
        library.close()
    assert (stored.kind, stored.layout, stored.num_virtual_tokens) == ("deep", TINY_LAYOUT, 7)

    code, _, err = run(capsys, "blend", "ada", "cy", "--name", "x")
    assert_one_line_error(code, err, "'cy' is a soft prompt and 'ada' a deep one", "one kind")
