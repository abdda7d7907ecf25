"""minerva: a local OpenAI-compatible server for GGUF and SafeTensors model files."""

__version__ = "0.1.0"
