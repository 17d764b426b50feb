"""The screens: chat, persona picker, conversations, help."""
