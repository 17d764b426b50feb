"""Soft prompts: the tensor and its metadata, how it is injected, how it is initialised."""
