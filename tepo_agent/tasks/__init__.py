"""Task suites (the paper's three domains, in miniature, generated with seeds) and verifiers."""

from tepo_agent.tasks.base import SuiteName, Task
from tepo_agent.tasks.knowledge import KnowledgeBase, deep_search_suite, knowledge_suite
from tepo_agent.tasks.math_tasks import math_suite
from tepo_agent.tasks.verifiers import VerifierName, normalize_answer, verify

__all__ = [
    "KnowledgeBase",
    "SuiteName",
    "Task",
    "VerifierName",
    "deep_search_suite",
    "knowledge_suite",
    "math_suite",
    "normalize_answer",
    "verify",
]
