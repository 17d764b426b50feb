"""The chat engine: frozen model + soft prompt -> streamed reply, with the KV cache kept across turns."""
