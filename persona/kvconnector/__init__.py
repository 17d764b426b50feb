"""persona's KV connector for vLLM: a persona's N positions put straight into vLLM's paged cache.

This package runs inside vLLM's own process and virtual environment, so it imports only torch,
safetensors, vllm and the standard library, never another persona module: `store` (fetch, verify
and cache a persona's keys and values; no vllm) and `connector` (the KVConnectorBase_V1 subclass).
docs/vllm.md says how a vLLM server is started with it.
"""
