"""The gateway to vLLM servers: persona renders and tokenises, vLLM computes (docs/vllm.md)."""
