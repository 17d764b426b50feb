"""persona's KV connector for vLLM: a persona's N positions put straight into vLLM's paged cache.

This package runs inside vLLM's own process and virtual environment, so it imports only torch,
safetensors, vllm and the standard library, and its modules import each other relatively: it
works under any package name, so vLLM's path can hold this folder alone (as
`persona_kvconnector`, see scripts/vllm-venv.sh), never persona or its dependencies. `store`
fetches, verifies and caches a persona's keys and values (no vllm); `connector` is the
KVConnectorBase_V1 subclass. docs/vllm.md says how a vLLM server is started with it.
"""

CONNECTOR_CLASS = "PersonaConnector"
PACKAGE = "persona_kvconnector"  # the name vLLM's environment imports this folder under
