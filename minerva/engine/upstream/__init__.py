"""An engine over remote servers (llama-server, vLLM, other minervas): replicas, health, affinity, token streams."""
