"""Fuzz every soft-prompt reader: safetensors headers, our persona file, PEFT adapter dirs, KoboldAI zips.

Files are built from a valid prompt and then bent: headers that lie about lengths, shapes, dtypes and
offsets; metadata and fingerprints of every JSON type; zips with climbing, duplicate, encrypted-looking
or corrupted members; .npy headers that claim huge arrays. A read must succeed with a sane (N, D)
float32 prompt or be refused in one line, within bounded memory.
"""

from __future__ import annotations

import io
import json
import struct
import tempfile
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import save as st_save

from persona.formats import read_prompt
from persona.prompt.softprompt import SoftPrompt
from tests.fuzz.harness import check, fuzz_settings

TEXT = st.text(max_size=40)
JSON_LEAVES = st.none() | st.booleans() | st.integers() | st.floats() | TEXT
JSON = st.recursive(
    JSON_LEAVES,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)
DIMS = st.integers(-2, 6) | st.sampled_from([2**31, 2**63 - 1, 10**12])
DTYPES = st.sampled_from(
    ["F32", "F16", "BF16", "F64", "I64", "U8", "BOOL", "F8_E4M3", "C64", "X", ""]
)
FINGERPRINT = st.one_of(
    st.builds(
        lambda h, v, extra: json.dumps(
            {
                "architecture": "Llama",
                "hidden_size": h,
                "vocab_size": v,
                "embedding_sha256": "ab",
                **extra,
            }
        ),
        DIMS | st.floats() | TEXT,
        DIMS,
        st.dictionaries(TEXT, JSON, max_size=2),
    ),
    JSON.map(lambda value: json.dumps(value)),
    st.builds(lambda depth: "[" * depth, st.integers(1, 50_000)),
    TEXT,
)
METADATA = st.dictionaries(
    st.sampled_from(
        ["format", "name", "description", "init", "base_model", "fingerprint", "persona_format"]
    )
    | TEXT,
    TEXT | FINGERPRINT,
    max_size=5,
)
SHAPE = st.lists(st.integers(0, 6), min_size=0, max_size=3)


def valid_file(tokens: int, width: int, meta: dict[str, str]) -> bytes:
    return st_save({"prompt_embeddings": torch.randn(tokens, width)}, metadata=meta)  # (N, D)


@st.composite
def safetensors_bytes(draw: st.DrawFn) -> bytes:
    """A safetensors file: valid, with a forged header, or a valid one bent by flips and truncation."""
    kind = draw(st.sampled_from(["valid", "forged", "forged", "bent"]))
    if kind != "forged":
        data = valid_file(draw(st.integers(1, 4)), draw(st.integers(1, 8)), draw(METADATA))
        if kind == "bent":
            data = bytearray(data)
            for position in draw(st.lists(st.integers(0, len(data) - 1), max_size=4)):
                data[position] = draw(st.integers(0, 255))
            data = bytes(data[: draw(st.integers(0, len(data)))])
        return data
    shape = draw(st.lists(DIMS, max_size=3))
    start = draw(st.integers(0, 64) | st.just(2**62))
    end = draw(st.integers(0, 128) | st.just(2**63))
    entry = {"dtype": draw(DTYPES), "shape": shape, "data_offsets": [start, end]}
    header: object = {draw(st.sampled_from(["prompt_embeddings", "other", "__metadata__"])): entry}
    if draw(st.booleans()):
        header["__metadata__"] = draw(METADATA | JSON)  # type: ignore[index]
    if draw(st.integers(0, 9)) == 0:
        header = draw(
            JSON
            | st.builds(lambda depth: [[]] if depth < 2 else "[" * depth, st.integers(0, 50_000))
        )
    text = (
        header.encode()
        if isinstance(header, str) and header.startswith("[[")
        else json.dumps(header).encode()
    )  # raw nesting
    claimed = draw(st.sampled_from(["true", "true", "short", "long", "huge"]))
    length = {
        "true": len(text),
        "short": max(0, len(text) - 3),
        "long": len(text) + 5,
        "huge": 2**63,
    }[claimed]
    return struct.pack("<Q", length) + text + draw(st.binary(max_size=200))


def assert_sane(prompt: SoftPrompt) -> None:
    assert prompt.embeddings.dtype == torch.float32 and prompt.embeddings.dim() == 2
    assert prompt.num_virtual_tokens > 0 and prompt.hidden_size > 0
    assert bool(torch.isfinite(prompt.embeddings).all()) and prompt.name.strip()


def test_fuzz_safetensors_headers() -> None:
    @fuzz_settings(2000)
    @given(data=safetensors_bytes())
    def case(data: bytes) -> None:
        prompt = check("safetensors header", lambda: SoftPrompt.from_bytes(data, source="fuzz"))
        if prompt is not None:
            assert_sane(prompt)

    case()


def test_fuzz_persona_files() -> None:
    """Our own file through import's front door: detection first, then the reader it picks."""

    @fuzz_settings(800)
    @given(
        data=safetensors_bytes() | st.binary(max_size=64),
        prefix=st.sampled_from([b"", b"", b"PK\x03\x04", b"\x00" * 8 + b"{"]),
    )
    def case(data: bytes, prefix: bytes) -> None:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "voice.safetensors"
            path.write_bytes(prefix + data)
            prompt = check("persona file", lambda: read_prompt(path))
            if prompt is not None:
                assert_sane(prompt)

    case()


GOOD_PEFT_CONFIG = st.fixed_dictionaries(
    {"peft_type": st.just("PROMPT_TUNING"), "task_type": st.just("CAUSAL_LM")},
    optional={
        "num_virtual_tokens": st.none() | st.integers(1, 4),
        "token_dim": st.none() | st.integers(1, 8),
        "base_model_name_or_path": TEXT,
    },
).map(json.dumps)
PEFT_CONFIG = st.one_of(
    GOOD_PEFT_CONFIG,
    GOOD_PEFT_CONFIG,
    GOOD_PEFT_CONFIG,
    st.fixed_dictionaries(
        {"peft_type": st.sampled_from(["PROMPT_TUNING", "prompt_tuning", "LORA"]) | JSON},
        optional={
            "task_type": st.sampled_from(["CAUSAL_LM", "SEQ_2_SEQ_LM"]) | JSON,
            "num_virtual_tokens": DIMS | JSON,
            "token_dim": DIMS | JSON,
            "num_transformer_submodules": st.sampled_from([1, 2, None]) | JSON,
            "base_model_name_or_path": TEXT | JSON,
        },
    ).map(json.dumps),
    JSON.map(json.dumps),
    st.builds(lambda depth: "[" * depth, st.integers(1, 50_000)),
    st.binary(max_size=40).map(lambda raw: raw.decode("latin-1")),
)


def test_fuzz_peft_adapter_directories() -> None:
    valid = st.builds(valid_file, st.integers(1, 4), st.integers(1, 8), METADATA)

    @fuzz_settings(800)
    @given(
        config=PEFT_CONFIG,
        weights=st.one_of(valid, valid, st.none(), safetensors_bytes()),
        pickled=st.integers(0, 3).map(lambda n: n == 0),
        as_file=st.booleans(),
    )
    def case(config: str, weights: bytes | None, pickled: bool, as_file: bool) -> None:
        with tempfile.TemporaryDirectory() as folder:
            adapter = Path(folder) / "adapter"
            adapter.mkdir()
            (adapter / "adapter_config.json").write_text(
                config, encoding="utf-8", errors="surrogateescape"
            )
            if weights is not None:
                (adapter / "adapter_model.safetensors").write_bytes(weights)
            if pickled:
                (adapter / "adapter_model.bin").write_bytes(
                    b"\x80\x04cos\nsystem\n."
                )  # never to be unpickled
            target = adapter / "adapter_config.json" if as_file else adapter
            prompt = check("peft adapter dir", lambda: read_prompt(target))
            if prompt is not None:
                assert_sane(prompt)

    case()


NPY_DTYPES = st.sampled_from(["<f4", ">f4", "<f2", "<f8", "<i4", "|O", "|b1", "<c8"])


@st.composite
def npy_bytes(draw: st.DrawFn) -> bytes:
    dtype = draw(st.sampled_from(["<f4", "<f2"]) | NPY_DTYPES)
    shape = tuple(draw(st.lists(st.integers(1, 6), min_size=2, max_size=2) | SHAPE))
    if dtype == "|O":
        buffer = io.BytesIO()
        np.save(
            buffer, np.array([{"a": 1}, None], dtype=object), allow_pickle=True
        )  # a pickle inside
        return buffer.getvalue()
    buffer = io.BytesIO()
    np.save(buffer, np.ones(shape, dtype=np.dtype(dtype)), allow_pickle=False)
    data = buffer.getvalue()
    if draw(st.integers(0, 3)) == 0:  # the header claims another shape than the data holds
        claimed = str(tuple(draw(st.lists(DIMS, min_size=0, max_size=3)))).encode()
        data = data.replace(str(shape).encode(), claimed, 1)
    if draw(st.integers(0, 4)) == 0:
        data = data[: draw(st.integers(0, len(data)))]
    return data


MEMBER_NAMES = (
    st.sampled_from(
        [
            "tensor.npy",
            "meta.json",
            "../tensor.npy",
            "/etc/tensor.npy",
            "C:\\tensor.npy",
            "dir/tensor.npy",
            "tensor.npy",
            "..\\..\\x",
            "",
        ]
    )
    | TEXT
)


@st.composite
def kobold_zip(draw: st.DrawFn) -> bytes:
    buffer = io.BytesIO()
    compression = draw(
        st.sampled_from(
            [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]
        )
    )
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        members = [("tensor.npy", draw(npy_bytes()))] if draw(st.integers(0, 5)) else []
        if draw(st.booleans()):
            meta = draw(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "name": TEXT | JSON,
                        "description": TEXT | JSON,
                        "supported": JSON,
                        "persona_fingerprint": FINGERPRINT | JSON,
                    },
                )
            )
            members.append(("meta.json", json.dumps(meta).encode()))
        if draw(st.booleans()):
            members += draw(st.lists(st.tuples(MEMBER_NAMES, st.binary(max_size=40)), max_size=3))
        for name, payload in members:
            if name.split("\x00")[0].strip(
                "/"
            ):  # zipfile cuts a name at NUL and cannot write an empty one
                archive.writestr(name, payload)
    data = bytearray(buffer.getvalue())
    if draw(st.integers(0, 2)) == 0:
        for position in draw(
            st.lists(st.integers(0, len(data) - 1), max_size=3)
        ):  # corrupt a few bytes
            data[position] = draw(st.integers(0, 255))
    if draw(st.integers(0, 5)) == 0:
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


MEMORY_BOUND = (
    96 * 1024 * 1024
)  # the readers' own limit is 64 MiB per member; a forged .npy header must not beat it


def test_fuzz_kobold_zips() -> None:
    @fuzz_settings(1200)
    @given(data=kobold_zip())
    def case(data: bytes) -> None:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "voice.zip"
            path.write_bytes(data)
            tracemalloc.start()  # numpy reports its array allocations here, so a forged shape shows
            try:
                prompt = check("kobold zip", lambda: read_prompt(path))
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            assert peak < MEMORY_BOUND, f"reading a {len(data)}-byte zip allocated {peak} bytes"
            if prompt is not None:
                assert_sane(prompt)

    case()
