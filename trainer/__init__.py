"""The TEPO trainer process (installed as ``tepo_agent.trainer``).

The runtime never imports this package: serving must not load training code.
"""
