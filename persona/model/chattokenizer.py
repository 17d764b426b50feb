"""A tokenizer for chat that loads in a fraction of a second: `tokenizers` plus the model's chat template.

transformers' AutoTokenizer costs about a second and a half at every start, mostly importing its
tokenization stack. Chat needs little of it: encode, decode, the special tokens and the chat
template. `ChatTokenizer` is that subset, built from the same files (tokenizer.json,
tokenizer_config.json, chat_template.jinja) and rendering the template in the same jinja
environment transformers sets up (tests compare the text), without importing transformers. It
applies only to tokenizers that transformers itself runs straight from tokenizer.json
(`TokenizersBackend`, `PreTrainedTokenizerFast`), with no custom code and no post-decoding clean-up; `load` returns None for anything else and the caller uses
AutoTokenizer. Tests compare both on every call persona makes.
"""

from __future__ import annotations

import functools
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2 import TemplateError, TemplateSyntaxError

PLAIN_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")
SPECIAL_TOKENS_ATTRIBUTES = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)


def load(directory: Path) -> ChatTokenizer | None:
    """The chat tokenizer of a model directory, or None where AutoTokenizer must be used."""
    directory = Path(directory)
    try:
        config = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if (
        not isinstance(config, dict)
        or config.get("tokenizer_class") not in PLAIN_CLASSES
        or "auto_map" in config
    ):
        return None
    if (
        config.get("clean_up_tokenization_spaces")
        or config.get("add_bos_token")
        or config.get("add_eos_token")
    ):
        return None
    template = config.get("chat_template")
    template_file = directory / "chat_template.jinja"
    if template_file.is_file():
        try:
            template = template_file.read_text(encoding="utf-8")
        except (OSError, ValueError):  # unreadable or not UTF-8: AutoTokenizer says what is wrong
            return None
    if not isinstance(template, str) or not (directory / "tokenizer.json").is_file():
        return None
    from tokenizers import Tokenizer

    try:
        backend = Tokenizer.from_file(str(directory / "tokenizer.json"))
    except Exception:
        return None
    return ChatTokenizer(backend, config, template, str(directory))


def _content(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class ChatTokenizer:
    """What persona calls on a tokenizer, with the semantics of transformers' for these files."""

    def __init__(
        self, backend: Any, config: dict[str, Any], chat_template: str, name_or_path: str
    ) -> None:
        self._backend = backend
        self.chat_template = chat_template
        self.name_or_path = name_or_path
        self.special_tokens_map = {
            attr: token
            for attr in SPECIAL_TOKENS_ATTRIBUTES
            if (token := _content(config.get(attr))) is not None
        }
        extra = config.get("extra_special_tokens") or config.get("additional_special_tokens") or []
        extra_tokens = [
            token
            for token in map(_content, extra.values() if isinstance(extra, dict) else extra)
            if token
        ]
        self.all_special_tokens = list(
            dict.fromkeys([*self.special_tokens_map.values(), *extra_tokens])
        )
        self.added_tokens_encoder = {
            token.content: index for index, token in backend.get_added_tokens_decoder().items()
        }

    def __getattr__(self, name: str) -> Any:  # eos_token, pad_token_id, ...
        if name.endswith("_token_id") and name[: -len("_id")] in SPECIAL_TOKENS_ATTRIBUTES:
            token = self.special_tokens_map.get(name[: -len("_id")])
            return None if token is None else self._backend.token_to_id(token)
        if name in SPECIAL_TOKENS_ATTRIBUTES:
            return self.special_tokens_map.get(name)
        raise AttributeError(name)

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": self.encode(text, add_special_tokens=add_special_tokens)}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self._backend.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: Any, skip_special_tokens: bool = False) -> str:
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        return self._backend.decode(ids, skip_special_tokens=skip_special_tokens)

    def get_vocab(self) -> dict[str, int]:
        return self._backend.get_vocab(with_added_tokens=True)

    def __len__(self) -> int:
        return self._backend.get_vocab_size(with_added_tokens=True)

    def apply_chat_template(
        self,
        conversation: list[dict[str, str]],
        tokenize: bool = True,
        add_generation_prompt: bool = False,
        **kwargs: Any,
    ) -> Any:
        variables = {**self.special_tokens_map, **kwargs}
        try:
            template = _compile(self.chat_template)
        except (
            TemplateSyntaxError
        ):  # a tag only transformers defines ({% generation %}): let it render
            from transformers.utils.chat_template_utils import render_jinja_template

            rendered, _ = render_jinja_template(  # type: ignore[str-unpack]  # stubs: a str; it returns a pair
                conversations=[conversation],
                chat_template=self.chat_template,
                add_generation_prompt=add_generation_prompt,
                **variables,
            )
            text = rendered[0]
        else:
            text = template.render(
                messages=conversation,
                tools=None,
                documents=None,
                add_generation_prompt=add_generation_prompt,
                **variables,
            )
        return self.encode(text, add_special_tokens=False) if tokenize else text


@functools.cache
def _compile(source: str) -> Any:
    """The template in the environment chat templates are written for (as transformers sets it up):
    sandboxed, trim_blocks and lstrip_blocks, loop controls, `raise_exception`, `strftime_now`,
    and a `tojson` that leaves non-ASCII text as it is."""
    from jinja2 import ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    def tojson(
        value: Any,
        ensure_ascii: bool = False,
        indent: Any = None,
        separators: Any = None,
        sort_keys: bool = False,
    ) -> str:
        return json.dumps(
            value,
            ensure_ascii=ensure_ascii,
            indent=indent,
            separators=separators,
            sort_keys=sort_keys,
        )

    def strftime_now(format: str) -> str:
        return datetime.now().strftime(format)

    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[ext.loopcontrols]
    )
    environment.filters["tojson"] = tojson
    environment.globals["raise_exception"] = raise_exception
    environment.globals["strftime_now"] = strftime_now
    return environment.from_string(source)
