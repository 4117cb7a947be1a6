"""Policies: the versioned registry the trainer publishes to (:mod:`~tepo_agent.policy.registry`)
and the hot swap that makes a serving backend follow it (:mod:`~tepo_agent.policy.hotswap`).

The registry names load here; the hot swap (torch, the transformers backend) only when
``tepo_agent.policy.hotswap`` is imported.
"""

from tepo_agent.policy.registry import PolicyEvent, PolicyKind, PolicyRecord, PolicyRegistry

__all__ = ["PolicyEvent", "PolicyKind", "PolicyRecord", "PolicyRegistry"]
