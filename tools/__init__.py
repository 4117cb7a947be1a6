"""Tools the agent calls, each a LangChain tool (installed as ``tepo_agent.tools``)."""
