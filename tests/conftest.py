"""Shared fixtures: every test gets its own data dir; unit tests run on a tiny random Llama."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a tiny test model<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = [
    "What is the capital of France? The capital of France is Paris.",
    "To be, or not to be, that is the question.",
    "I am not only witty in myself, but the cause that wit is in other men.",
    "Hello there! How are you today? I am fine, thank you.",
    "system user assistant persona prompt chat reply",
]


@pytest.fixture(autouse=True)
def isolated_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """Tests never touch the user's data: PERSONA_HOME is a fresh temp dir for each test."""
    home = tmp_path_factory.mktemp("persona-home")
    monkeypatch.setenv("PERSONA_HOME", str(home))
    monkeypatch.delenv("PERSONA_MODEL", raising=False)
    # a new library starts empty in tests; tests of the starter personas clear this themselves
    monkeypatch.setenv("PERSONA_NO_STARTERS", "1")
    from persona.model import warmup

    warmup.forget()  # nothing a command read in advance for one test reaches another
    yield home
    warmup.forget()


def build_tiny_tokenizer(directory: Path):
    """A small byte-level BPE tokenizer with a ChatML template (SmolLM2's layout), offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHATML_TEMPLATE
    fast.save_pretrained(directory)
    return fast


def edited_copy(directory: Path, target: Path, filename: str, change: dict) -> Path:
    """A copy of a model directory whose JSON file `filename` has `change` merged in."""
    import shutil

    shutil.copytree(directory, target)
    data = json.loads((target / filename).read_text())
    data.update(change)
    (target / filename).write_text(json.dumps(data))
    return target


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random LlamaForCausalLM saved as a normal HF directory (seconds to build)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    directory = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = build_tiny_tokenizer(directory)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        initializer_range=0.3,  # large enough that greedy output varies token to token
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(directory)
    (directory / "persona-test.json").write_text(json.dumps({"tiny": True}))
    return directory


@pytest.fixture(scope="session")
def tiny(tiny_model_dir: Path):
    """The tiny model loaded through persona's own loader (frozen, fingerprinted)."""
    from persona.model.loader import load_model

    return load_model(tiny_model_dir)


@pytest.fixture(params=["transformers", "native"])
def each_tiny(request):
    """The tiny model on transformers' model class, then on persona's own decoder (what chat and
    serve load): a test taking it runs on both."""
    return request.getfixturevalue(
        "tiny_native" if request.param == "native" else "tiny_transformers"
    )


@pytest.fixture(scope="session")
def tiny_transformers(tiny):
    """`tiny` under a name that modules overriding `tiny` can still reach."""
    return tiny


@pytest.fixture(scope="session")
def tiny_native(tiny_model_dir: Path):
    """The tiny model on persona's own inference decoder (persona.model.llama), as chat loads it."""
    from persona.model.loader import load_model

    return load_model(tiny_model_dir, native=True)


@pytest.fixture
def tiny_prompt(tiny):
    """A random soft prompt of 5 virtual tokens that fits the tiny model."""
    import torch

    from persona.prompt.softprompt import SoftPrompt

    generator = torch.Generator().manual_seed(1)
    embeddings = torch.randn(5, tiny.fingerprint.hidden_size, generator=generator) * 0.5  # (5, D)
    return SoftPrompt(
        embeddings=embeddings,
        name="tester",
        description="a test voice",
        fingerprint=tiny.fingerprint,
    )


@pytest.fixture(scope="session")
def default_model_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded default model, converted once per test run into a shared models folder."""
    import os

    from persona.errors import ModelError
    from persona.model.loader import default_gguf_path, default_model_dir

    try:
        default_gguf_path()
    except ModelError as exc:
        pytest.skip(str(exc))
    home = tmp_path_factory.mktemp("default-model-home")
    previous = os.environ.get("PERSONA_HOME")
    os.environ["PERSONA_HOME"] = str(home)
    try:
        default_model_dir(progress=None)
    finally:
        if previous is None:
            os.environ.pop("PERSONA_HOME", None)
        else:
            os.environ["PERSONA_HOME"] = previous
    return home / "models"


@pytest.fixture
def real_home(isolated_home: Path, default_model_store: Path) -> Path:
    """A fresh PERSONA_HOME whose models folder already holds the converted default model."""
    (isolated_home / "models").symlink_to(default_model_store, target_is_directory=True)
    return isolated_home


LLAMA2_STYLE_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}<<SYS>>{{ message['content'] }}<</SYS>>\n"
    "{% elif message['role'] == 'user' %}[INST] {{ message['content'] }} [/INST]"
    "{% else %} {{ message['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)


@pytest.fixture(scope="session")
def sentencepiece_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-layer Llama checkpoint with a sentencepiece tokenizer (tokenizer.model, no
    tokenizer.json), as older Llama-family models ship."""
    spm = pytest.importorskip("sentencepiece")
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    directory = tmp_path_factory.mktemp("spm-llama")
    corpus = directory / "corpus.txt"
    corpus.write_text("\n".join(CORPUS * 20))
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(directory / "tokenizer"),
        vocab_size=120,
        model_type="bpe",
        bos_id=1,
        eos_id=2,
        unk_id=0,
        pad_id=-1,
        minloglevel=2,
    )
    # the layout of a sentencepiece Llama checkpoint: tokenizer.model, no tokenizer.json
    (directory / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "LlamaTokenizer",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "chat_template": LLAMA2_STYLE_TEMPLATE,
            }
        )
    )
    config = LlamaConfig(
        vocab_size=120,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        initializer_range=0.3,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(directory)
    return directory


@pytest.fixture
def library(tmp_path: Path) -> Path:
    """A library file with two personas (hamlet has two versions, the first with a description,
    metrics, a training record and a tag) and one conversation that both speak in."""
    from persona.library import open_library
    from tests.library_helpers import FINGERPRINT, METRICS, TRAINING, make_prompt

    path = tmp_path / "library.db"
    lib = open_library(path)
    lib.add_version(
        "hamlet",
        make_prompt(seed=1),
        description="the prince",
        model_id="tiny",
        metrics=METRICS,
        training=TRAINING,
        tags=["tragic"],
    )
    lib.add_version("hamlet", make_prompt(seed=2), model_id="tiny", metrics=METRICS)
    lib.add_version("ophelia", make_prompt(seed=3, tokens=8), description="fair")
    chat = lib.create_conversation("the castle", str(FINGERPRINT))
    lib.add_message(chat, "user", "my lord?", None)
    lib.add_message(chat, "assistant", "words, words, words", "hamlet", token_count=4)
    lib.add_message(chat, "assistant", "O, woe is me", "ophelia", cut_short=True)
    lib.close()
    return path
