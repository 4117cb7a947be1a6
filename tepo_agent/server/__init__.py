"""``tepo-agent serve``: the in-process backend behind an OpenAI/vLLM-compatible HTTP server."""

from tepo_agent.server.app import create_app

__all__ = ["create_app"]
