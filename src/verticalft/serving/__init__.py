"""Serving: the vLLM OpenAI-compatible server's lifecycle (`server`) and, next, the benchmark driver."""
