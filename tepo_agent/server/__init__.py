"""``tepo-agent serve``: the in-process backend behind an OpenAI/vLLM-compatible HTTP server."""
