"""The terminal chat client: a Textual app that talks through the chat engine and saves to the library.

Nothing here imports torch: the engine and the library are handed in, so tests can inject fakes
and the CLI builds the real ones.
"""
