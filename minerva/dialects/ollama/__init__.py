"""Ollama's native API (`/api/…`): what Ollama-only clients (Copilot's Ollama provider, Open WebUI, Continue,
the `ollama` Python client) speak, on minerva's own port."""
