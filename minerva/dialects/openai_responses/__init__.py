"""The OpenAI Responses API (`/v1/responses`): what Codex CLI speaks."""
