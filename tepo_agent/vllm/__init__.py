"""vLLM's CPU build: its own virtual environment (:mod:`~tepo_agent.vllm.env`) and a real
``vllm serve`` started and stopped for the HTTP backend (:mod:`~tepo_agent.vllm.launcher`),
with tepo-agent's own vLLM plugin installed into that environment (:mod:`~tepo_agent.vllm.plugin`;
its source, the ``tepo-vllm`` distribution, is the data folder ``plugin_dist/``).

Nothing is imported here; ``from tepo_agent.vllm.launcher import VllmServer`` is the entry point.
"""
