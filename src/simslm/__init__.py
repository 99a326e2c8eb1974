"""simslm: interleaved speech-text language models, from synthetic speech to scaling laws."""

__version__ = "0.1.0"
