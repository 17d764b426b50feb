import pytest
import torch

from persona.errors import PromptFormatError, PromptMismatchError
from persona.model.fingerprint import Fingerprint
from persona.prompt.softprompt import SoftPrompt


def test_round_trip_through_our_file_keeps_tensor_and_metadata(tiny_prompt, tmp_path):
    path = tiny_prompt.save(tmp_path / "p.safetensors")
    loaded = SoftPrompt.load(path)
    assert torch.equal(loaded.embeddings, tiny_prompt.embeddings)
    assert (loaded.name, loaded.description, loaded.fingerprint) == (
        "tester",
        "a test voice",
        tiny_prompt.fingerprint,
    )
    assert path.stat().st_mode & 0o777 == 0o600


def test_prompt_for_another_model_is_refused_naming_both(tiny_prompt, tiny):
    other = Fingerprint("LlamaForCausalLM", tiny.fingerprint.hidden_size, 999, "0" * 16)
    with pytest.raises(PromptMismatchError) as info:
        tiny_prompt.check_fits(other)
    assert str(other) in str(info.value) and str(tiny.fingerprint) in str(info.value)


def test_prompt_of_wrong_width_is_refused(tiny):
    prompt = SoftPrompt(torch.zeros(3, tiny.fingerprint.hidden_size + 1), name="wide")
    with pytest.raises(PromptMismatchError, match="width"):
        prompt.check_fits(tiny.fingerprint)


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00" * 4, b"\xff" * 8 + b"{}", (10).to_bytes(8, "little") + b"{not json}"],
)
def test_broken_safetensors_bytes_give_a_format_error(data):
    with pytest.raises(PromptFormatError):
        SoftPrompt.from_bytes(data)


def test_nan_and_wrong_rank_are_refused():
    with pytest.raises(PromptFormatError, match="NaN"):
        SoftPrompt(torch.full((2, 4), float("nan")), name="x")
    with pytest.raises(PromptFormatError, match="shape"):
        SoftPrompt(torch.zeros(4), name="x")
