"""Regenerate docs/chat.svg: a real conversation on the default model that switches persona.

    .venv/bin/python docs/make_chat_svg.py                      # two personas made from descriptions
    .venv/bin/python docs/make_chat_svg.py --personas NAME NAME  # two personas from your library

Replies are greedy (temperature 0), so the picture only changes when the model, the personas or
the client change. The chat runs headless through Textual's Pilot; nothing is typed by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

DESCRIBED = {
    "pirate": "A pirate captain who talks about ships, the sea and treasure.",
    "butler": "A very formal English butler who answers with great dignity.",
}
QUESTIONS = ("What should I do on a rainy afternoon?", "And what would you do?")


async def drive(app, first: str, second: str) -> None:  # noqa: ANN001 - a PersonaChatApp
    from textual.widgets import TextArea

    async with app.run_test(size=(100, 30)) as pilot:
        for command, question in (
            (f"/persona {first}", QUESTIONS[0]),
            (f"/persona {second}", QUESTIONS[1]),
        ):
            for text in (command, question):
                app.chat.query_one(TextArea).insert(text)
                await pilot.press("enter")
                await pilot.pause(0.1)
                while app.chat.generating:
                    await pilot.pause(0.1)
        for area in app.query(TextArea):
            area.cursor_blink = False
        app.clear_notifications()
        await pilot.pause(0.5)
        app.save_screenshot("chat.svg", str(Path(__file__).parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--personas", nargs=2, metavar="NAME", help="two personas from the library instead"
    )
    args = parser.parse_args()

    from persona.engine.chat import ChatEngine
    from persona.library import open_library
    from persona.model.loader import load_model
    from persona.prompt.init import initial_prompt
    from persona.prompt.softprompt import SoftPrompt
    from persona.tui.app import PersonaChatApp
    from persona.tui.local import local_backend

    loaded = load_model(None)
    with tempfile.TemporaryDirectory() as scratch:
        if args.personas:
            library, (first, second) = open_library(), args.personas
        else:
            library = open_library(Path(scratch) / "library.db")
            for name, description in DESCRIBED.items():
                embeddings, init = initial_prompt(
                    loaded.model, loaded.tokenizer, 16, description=description
                )  # (16, D)
                prompt = SoftPrompt(
                    embeddings,
                    name=name,
                    description=description,
                    fingerprint=loaded.fingerprint,
                    init=init,
                )
                library.add_version(name, prompt, model_id=loaded.model_id)
            first, second = DESCRIBED
        overrides = {"temperature": 0, "max_new_tokens": 80}
        backend = local_backend(ChatEngine(loaded), library)
        app = PersonaChatApp(backend, library, overrides=overrides)
        asyncio.run(drive(app, first, second))
        library.close()
    print(Path(__file__).parent / "chat.svg")


if __name__ == "__main__":
    main()
