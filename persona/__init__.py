"""persona: chat with trained soft-prompt personas on a frozen language model."""

__version__ = "0.1.0"
