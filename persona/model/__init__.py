"""The frozen base model: loading (embedded default or any local HF directory) and its fingerprint."""
