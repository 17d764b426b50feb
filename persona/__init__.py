"""persona: chat with trained personas (deep or soft prompts) on a frozen language model."""

__version__ = "0.1.0"
