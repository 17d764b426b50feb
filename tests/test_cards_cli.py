"""Character cards through the commands a user runs: import, show, train --card, export (tiny model)."""

from __future__ import annotations

import json
from pathlib import Path

from persona.formats.card_files import read_card
from persona.library import open_library
from tests.helpers import run

FIXTURES = Path(__file__).parent / "fixtures" / "cards"

V2_CARD = {
    "spec": "chara_card_v2",
    "spec_version": "2.0",
    "data": {
        "name": "Bob",
        "description": "{{char}} is a ferryman who has rowed the same river for forty years.",
        "personality": "patient, dry",
        "scenario": "{{user}} waits at the dock at dawn.",
        "first_mes": "*{{char}} steadies the boat.* Step in, {{user}}, and mind the oars.",
        "mes_example": (
            "<START>\n{{user}}: How deep is the river?\n{{char}}: Deep enough to keep its secrets.\n"
            "<START>\n{{user}}: Do you ever rest?\n{{char}}: The river rests in winter. So do I."
        ),
        "alternate_greetings": ["Fog today. We go slow."],
        "system_prompt": "Write {{char}}'s next reply.",
        "post_history_instructions": "Stay in character.",
        "creator_notes": "A quiet card.",
        "creator": "tests",
        "character_version": "2",
        "tags": ["river", "calm"],
        "extensions": {"depth_prompt": {"prompt": "Bob is tired.", "depth": 4}},
        "character_book": {"entries": [{"keys": ["river"], "content": "The Lethe."}]},
    },
}


def write_json(path: Path, value: dict) -> Path:
    path.write_text(json.dumps(value), encoding="utf-8")
    return path


def many_examples_card(blocks: int = 12) -> dict:
    card = json.loads(json.dumps(V2_CARD))
    card["data"]["mes_example"] = "\n".join(
        f"<START>\n{{{{user}}}}: Question {i}?\n{{{{char}}}}: Answer {i}, slow as the river."
        for i in range(blocks)
    )
    return card


def train_card_args(card: Path, model: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--card",
        str(card),
        *extra,
        "--model",
        str(model),
        "--virtual-tokens",
        "4",
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--quiet",
        "--style-sample",
        "none",
    ]


def test_import_of_a_foreign_card_shows_description_greeting_and_examples(
    tiny_model_dir, capsys
) -> None:
    """aichar (PyPI) wrote this PNG: persona reads another implementation's card."""
    card = FIXTURES / "aichar_v1.png"
    code, out, err = run(capsys, "import", str(card), "--model", str(tiny_model_dir))
    assert code == 0, err
    assert "imported 'Mara Voss'" in out and "3 example exchange(s)" in out
    assert "persona train --card" in out and "--name 'Mara Voss'" in out

    code, out, _ = run(capsys, "show", "Mara Voss")
    assert code == 0
    assert "description: Mara Voss is the captain of an airship" in out
    assert "Mara Voss's personality: bold, wry, protective" in out
    assert "greeting:" in out and "So you're the new hand. Can you tie a knot?" in out
    assert "examples:" in out and "3 written exchange(s)" in out
    assert "User: Who are you?" in out
    assert "Mara Voss: Captain Mara Voss, of the airship Kestrel." in out
    assert "imported:    from" in out and "(card, untrained)" in out

    library = open_library()
    try:
        prompt = library.get_prompt("Mara Voss")
        assert prompt.init == "text" and prompt.system.startswith("Mara Voss is the captain")
        version = library.get_persona("Mara Voss").versions[0]
        assert version.training["trained"] is False
    finally:
        library.close()


def test_import_of_a_card_forge_v3_png_uses_its_ccv3_chunk_and_tags(tiny_model_dir, capsys) -> None:
    code, _, err = run(
        capsys, "import", str(FIXTURES / "cardforge_v3.png"), "--model", str(tiny_model_dir)
    )
    assert code == 0, err
    library = open_library()
    try:
        info = library.get_persona("Old Tom")
        assert info.tags == ["lighthouse", "sea"]
        assert library.get_defaults("Old Tom").greeting.startswith("Ahoy!")
        assert info.description.startswith("Old Tom keeps the lighthouse")
    finally:
        library.close()


def test_round_trip_v2_to_persona_to_v3_to_persona_keeps_every_field(
    tmp_path, tiny_model_dir, capsys
) -> None:
    source = write_json(tmp_path / "bob.json", V2_CARD)
    assert run(capsys, "import", str(source), "--model", str(tiny_model_dir))[0] == 0

    exported = tmp_path / "bob.png"
    code, out, err = run(capsys, "export", "Bob", str(exported), "--format", "card")
    assert code == 0, err
    assert "as the model 'Bob'" in out

    card = read_card(exported)  # the V3 chunk
    assert card.spec == "chara_card_v3"
    original = V2_CARD["data"]
    for field in (
        "name",
        "description",
        "personality",
        "scenario",
        "first_mes",
        "mes_example",
        "system_prompt",
        "post_history_instructions",
        "creator_notes",
        "alternate_greetings",
    ):
        assert getattr(card, field) == original[field], field
    assert sorted(card.tags) == sorted(original["tags"])
    assert card.other["character_book"] == original["character_book"]
    assert card.extensions["depth_prompt"] == original["extensions"]["depth_prompt"]

    library = open_library()
    try:
        version = library.get_persona("Bob").versions[0]
    finally:
        library.close()
    reference = card.extensions["persona"]
    assert reference["prompt_sha256"] == version.sha256
    assert reference["model"] == "Bob" and reference["version"] == 1
    assert reference["trained"] is False

    code, _, err = run(
        capsys, "import", str(exported), "--name", "Bob again", "--model", str(tiny_model_dir)
    )
    assert code == 0, err
    code, first, _ = run(capsys, "show", "Bob")
    code, second, _ = run(capsys, "show", "Bob again")
    body = lambda text: [line for line in text.splitlines()[1:] if "imported:" not in line]  # noqa: E731
    assert body(first)[:8] == body(second)[:8]  # description, tags, greeting, examples


def test_export_png_carries_both_chunks_and_a_picture_pillow_reads(
    tmp_path, tiny_model_dir, capsys
) -> None:
    from PIL import Image

    source = write_json(tmp_path / "bob.json", V2_CARD)
    assert run(capsys, "import", str(source), "--model", str(tiny_model_dir))[0] == 0
    exported = tmp_path / "bob.png"
    assert run(capsys, "export", "Bob", str(exported), "--format", "card")[0] == 0

    import base64

    with Image.open(exported) as image:  # an independent PNG reader
        assert image.size == (400, 600)
        texts = dict(image.text)
    v3 = json.loads(base64.b64decode(texts["ccv3"]))
    v2 = json.loads(base64.b64decode(texts["chara"]))
    assert v3["spec"] == "chara_card_v3" and v3["spec_version"] == "3.0"
    assert v2["spec"] == "chara_card_v2" and v2["data"]["name"] == "Bob"
    assert v2["name"] == "Bob" and v2["first_mes"] == V2_CARD["data"]["first_mes"]  # V1 readers
    assert "group_only_greetings" in v3["data"] and "group_only_greetings" not in v2["data"]


def test_export_json_and_a_persona_that_never_was_a_card(tmp_path, capsys) -> None:
    from tests.library_helpers import make_prompt

    library = open_library()
    try:
        library.add_version("hamlet", make_prompt(seed=1), description="the prince", tags=["sad"])
        library.set_defaults("hamlet", {"greeting": "Words, words, words."})
    finally:
        library.close()
    target = tmp_path / "hamlet.json"
    assert run(capsys, "export", "hamlet", str(target), "--format", "card")[0] == 0
    card = json.loads(target.read_text(encoding="utf-8"))
    assert card["spec"] == "chara_card_v3"
    assert card["data"]["description"] == "the prince"
    assert card["data"]["first_mes"] == "Words, words, words."
    assert card["data"]["tags"] == ["sad"]
    assert card["data"]["extensions"]["persona"]["model"] == "hamlet"


def test_export_to_another_suffix_or_over_a_file_is_refused_in_one_line(tmp_path, capsys) -> None:
    from tests.library_helpers import make_prompt

    library = open_library()
    try:
        library.add_version("hamlet", make_prompt(seed=1))
    finally:
        library.close()
    code, _, err = run(capsys, "export", "hamlet", str(tmp_path / "h.txt"), "--format", "card")
    assert code == 1 and err.count("\n") == 1 and ".png" in err
    taken = tmp_path / "h.png"
    taken.write_bytes(b"mine")
    code, _, err = run(capsys, "export", "hamlet", str(taken), "--format", "card")
    assert code == 1 and "already exists" in err and taken.read_bytes() == b"mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.png"]  # no temporary left


def test_train_card_alone_learns_its_example_dialogues(tmp_path, tiny_model_dir, capsys) -> None:
    card = write_json(tmp_path / "bob.json", many_examples_card())
    code, out, err = run(capsys, *train_card_args(card, tiny_model_dir))
    assert code == 0, err
    assert "stored persona 'Bob' version 1" in out
    library = open_library()
    try:
        info = library.get_persona("Bob")
        training = info.versions[0].training
        assert training["source"] == f"card:{card}" and training["speaker"] == "Bob"
        assert training["train_examples"] + training["validation_examples"] == 12
        assert training["card"]["data"]["name"] == "Bob"
        assert library.get_defaults("Bob").greeting.startswith("*Bob steadies the boat.*")
        assert info.tags == ["calm", "river"]
        assert info.description.startswith("Bob is a ferryman")
    finally:
        library.close()
    code, out, _ = run(capsys, "show", "Bob")
    assert "12 written exchange(s)" in out and "Bob: Answer 3, slow as the river." in out


def test_train_card_with_a_log_trains_the_card_examples_as_written_ones(
    tmp_path, tiny_model_dir, capsys
) -> None:
    from tests.test_cli_train import write_log

    log = write_log(tmp_path)  # lines by BOB: the card's character
    card = write_json(tmp_path / "bob.json", V2_CARD)
    code, out, err = run(capsys, *train_card_args(card, tiny_model_dir, str(log)))
    assert code == 0, err
    library = open_library()
    try:
        training = library.get_persona("Bob").versions[0].training
    finally:
        library.close()
    assert training["written_examples"] == 2 and training["speaker"] == "BOB"
    assert training["source"].endswith("bard.txt")


def test_train_card_with_too_few_examples_says_so_and_stores_nothing(
    tmp_path, tiny_model_dir, capsys
) -> None:
    card = write_json(tmp_path / "bob.json", V2_CARD)  # two example replies
    code, _, err = run(capsys, *train_card_args(card, tiny_model_dir))
    assert code == 1 and err.count("\n") == 1 and "only 2 replies" in err and "at least 10" in err
    empty = json.loads(json.dumps(V2_CARD))
    empty["data"]["mes_example"] = ""
    code, _, err = run(
        capsys, *train_card_args(write_json(tmp_path / "e.json", empty), tiny_model_dir)
    )
    assert code == 1 and "hold no replies by 'Bob'" in err and "LOG" in err
    code, _, err = run(
        capsys, *train_card_args(card, tiny_model_dir, "--spec", str(tmp_path / "x.toml"))
    )
    assert code == 1 and "pass one of them" in err
    library = open_library()
    try:
        assert not library.has_persona("Bob")
    finally:
        library.close()


def test_the_exported_card_names_the_model_persona_serve_serves_its_prompt_under(
    tmp_path, tiny, tiny_model_dir, capsys
) -> None:
    from persona.serve.catalog import Catalog

    card = write_json(tmp_path / "bob.json", many_examples_card())
    assert run(capsys, "import", str(card), "--model", str(tiny_model_dir))[0] == 0
    assert run(capsys, *train_card_args(card, tiny_model_dir, "--kind", "soft"))[0] == 0
    newest, older = tmp_path / "new.png", tmp_path / "old.json"
    assert run(capsys, "export", "Bob", str(newest), "--format", "card")[0] == 0
    assert run(capsys, "export", "Bob", str(older), "--format", "card", "--version", "1")[0] == 0

    library = open_library()
    try:
        catalog = Catalog(library, tiny.fingerprint, str(tiny_model_dir))
        served = [model["id"] for model in catalog.models()]
        for path, model, trained in ((newest, "Bob", True), (older, "Bob@1", False)):
            reference = read_card(path).extensions["persona"]
            assert reference["model"] == model and reference["trained"] is trained
            assert catalog.resolve(reference["model"]).sha256 == reference["prompt_sha256"]
        assert "Bob" in served
    finally:
        library.close()


def test_a_card_with_nothing_but_a_name_imports_shows_and_exports(
    tmp_path, tiny_model_dir, capsys
) -> None:
    card = write_json(tmp_path / "bare.json", {"name": "Nobody"})  # a V1 card at its smallest
    code, out, err = run(capsys, "import", str(card), "--model", str(tiny_model_dir))
    assert code == 0, err
    assert "no greeting, 0 example exchange(s)" in out
    code, out, _ = run(capsys, "show", "Nobody")
    assert code == 0 and "examples:" not in out and "init vocab" in out
    assert run(capsys, "export", "Nobody", str(tmp_path / "n.json"), "--format", "card")[0] == 0
    exported = read_card(tmp_path / "n.json")
    assert exported.name == "Nobody" and exported.description == "" and exported.first_mes == ""


def test_a_card_name_the_library_cannot_take_asks_for_name(
    tmp_path, tiny_model_dir, capsys
) -> None:
    card = write_json(tmp_path / "odd.json", {"name": "Line\nbreak"})
    code, _, err = run(capsys, "import", str(card), "--model", str(tiny_model_dir))
    assert code == 1 and err.count("\n") == 1 and "--name" in err
    code, _, err = run(
        capsys, "import", str(card), "--name", "linebreak", "--model", str(tiny_model_dir)
    )
    assert code == 0, err


def test_train_card_with_two_logs_reads_them_as_one(tmp_path, tiny_model_dir, capsys) -> None:
    from tests.test_cli_train import write_log

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = write_log(tmp_path / "a"), write_log(tmp_path / "b", conversations=6)
    card = write_json(tmp_path / "bob.json", V2_CARD)
    code, _, err = run(capsys, *train_card_args(card, tiny_model_dir, str(first), str(second)))
    assert code == 0, err
    library = open_library()
    try:
        training = library.get_persona("Bob").versions[0].training
    finally:
        library.close()
    assert training["source"] == f"{first} + {second}"
    assert training["train_examples"] + training["validation_examples"] == 2 * (12 + 6)


def test_a_v2_png_from_another_program_imports_and_shows_its_fields(tiny_model_dir, capsys) -> None:
    """card-forge's V2 model wrote the JSON, Pillow the `chara` chunk (make_fixtures.py): a V2
    card as SillyTavern writes one, by code that is not persona's."""
    card = FIXTURES / "cardforge_v2.png"
    code, out, err = run(capsys, "import", str(card), "--model", str(tiny_model_dir))
    assert code == 0, err
    assert "imported 'Old Tom'" in out and "1 example exchange(s)" in out

    code, out, _ = run(capsys, "show", "Old Tom")
    assert code == 0
    assert "description: Old Tom keeps the lighthouse on Gull Rock" in out
    assert "greeting:" in out and "Ahoy! Mind the steps, they're slick with spray." in out
    assert "User: Lonely out here?" in out and "Old Tom: The gulls talk plenty, friend." in out
    library = open_library()
    try:
        assert library.get_persona("Old Tom").tags == ["lighthouse", "sea"]
        assert library.get_prompt("Old Tom").kind == "soft"  # untrained, from the description
    finally:
        library.close()
