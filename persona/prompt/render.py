"""The one renderer: chat messages (+ persona) -> token ids, for the trainer and the chat engine.

What a persona turn looks like (a deliberate choice, documented in the README):

* with a persona and no written system text, the conversation gets an explicit *empty* system
  message, so the model's built-in identity (SmolLM2's "You are a helpful AI assistant named
  SmolLM...") is not inserted: the soft prompt, which sits in front of everything, is the
  persona's whole identity;
* with `system=...` (the written "hard prompt" baseline, or a user's own system text) that text
  is the system message;
* with neither (`--no-persona`), the model's chat template decides, default system text included.

A persona trained with its description as the system message (`SoftPrompt.system`) keeps it: that
text opens the system message, and any written system text follows it after a blank line.

Training and chat both render through here, so a prompt is trained on exactly the token layout
it will see when it speaks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypedDict

from persona.errors import ModelError, PersonaError
from persona.prompt.labels import IGNORE_INDEX


class Message(TypedDict):
    role: str  # "system" | "user" | "assistant"
    content: str


class Renderer:
    """Renders conversations with a tokenizer's own chat template."""

    def __init__(self, tokenizer: Any) -> None:
        if not getattr(tokenizer, "chat_template", None):
            name = getattr(tokenizer, "name_or_path", "") or "this model"
            raise ModelError(
                f"{name} has no chat template; persona needs an instruction-tuned (chat) model "
                "whose tokenizer_config.json or chat_template.jinja defines one"
            )
        self.tokenizer = tokenizer

    def conversation(
        self,
        messages: Sequence[Message],
        persona: object | None = None,
        *,
        system: str | None = None,
    ) -> list[Message]:
        """The message list the template sees, with the system message decided as described above."""
        body = [m for m in messages if m["role"] != "system"]
        own_system = [m for m in messages if m["role"] == "system"]
        written = system if system is not None else own_system[0]["content"] if own_system else None
        trained = getattr(persona, "system", "") if persona is not None else ""
        if trained:
            text = f"{trained}\n\n{written}" if written else trained
            return [{"role": "system", "content": text}, *body]
        if written is not None:
            return [{"role": "system", "content": written}, *body]
        if persona is not None:
            return [{"role": "system", "content": ""}, *body]
        return list(body)

    def text(
        self,
        messages: Sequence[Message],
        persona: object | None = None,
        *,
        system: str | None = None,
        add_generation_prompt: bool = True,
    ) -> str:
        """The exact text that follows the soft prompt."""
        conversation = self.conversation(messages, persona, system=system)
        if not conversation and add_generation_prompt:
            return self._empty_generation_prompt()
        try:
            return self.tokenizer.apply_chat_template(
                conversation, tokenize=False, add_generation_prompt=add_generation_prompt
            )
        except PersonaError:
            raise
        except Exception as exc:  # jinja errors: e.g. a template that refuses a system role
            if (
                conversation
                and conversation[0]["role"] == "system"
                and not conversation[0]["content"]
            ):
                return self.tokenizer.apply_chat_template(
                    conversation[1:], tokenize=False, add_generation_prompt=add_generation_prompt
                )
            raise ModelError(
                f"the model's chat template failed on this conversation: {exc}"
            ) from None

    def _empty_generation_prompt(self) -> str:
        """What the template puts before an assistant turn that opens the conversation.

        Templates refuse an empty conversation, but a speaker may open a scene with nothing before
        it; rendering a lone assistant turn and cutting at its content gives exactly the prefix
        that the full example starts with.
        """
        marker = "\x00persona-reply\x00"
        full = self.text(
            [{"role": "assistant", "content": marker}], None, add_generation_prompt=False
        )
        if marker not in full:
            raise ModelError(
                "the model's chat template drops the content of an assistant turn that opens a conversation"
            )
        return full[: full.index(marker)]

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def render(
        self,
        messages: Sequence[Message],
        persona: object | None = None,
        *,
        system: str | None = None,
        add_generation_prompt: bool = True,
    ) -> list[int]:
        """Token ids of the conversation, ready for the model (after the soft prompt, if any)."""
        return self.encode(
            self.text(messages, persona, system=system, add_generation_prompt=add_generation_prompt)
        )

    def render_example(
        self,
        context: Sequence[Message],
        reply: str,
        persona: object | None = None,
        *,
        system: str | None = None,
    ) -> tuple[list[int], list[int]]:
        """(input ids, labels) for training: the labels cover only the reply and its end-of-turn.

        The prefix is tokenized on its own, exactly as the chat engine tokenizes it before it
        generates, so the model is trained on the token boundary it will see.
        """
        prefix = self.text(context, persona, system=system, add_generation_prompt=True)
        full = self.text(
            [*context, {"role": "assistant", "content": reply}],
            persona,
            system=system,
            add_generation_prompt=False,
        )
        if not full.startswith(prefix):
            raise ModelError(
                "the model's chat template renders an assistant turn differently from its generation prompt"
            )
        prefix_ids = self.encode(prefix)
        reply_ids = self.encode(full[len(prefix) :].rstrip())
        return prefix_ids + reply_ids, [IGNORE_INDEX] * len(prefix_ids) + reply_ids
