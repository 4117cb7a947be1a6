"""Verifiers: score a model's final answer against a reference, in [0, 1].

Every task carries the name of its verifier, so rewards and evaluation are automatic:
- ``exact``: 1 if the normalised answer equals the normalised reference, or the reference appears
  as a whole phrase at the end of the answer ("The answer is 42." matches 42), else 0.
- ``numeric``: 1 if the last number in the answer equals the reference within a relative
  tolerance of 1e-6 (and 1e-9 absolute), else 0.
- ``f1``: token-level F1 between the normalised answer and reference (SQuAD-style).
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from typing import Literal

VerifierName = Literal["exact", "numeric", "f1"]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:[eE][-+]?\d+)?")
_ANSWER_PREFIX = re.compile(r"^(?:the\s+)?(?:final\s+)?answer\s*(?:is|:)\s*", re.IGNORECASE)


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and articles, collapse whitespace (SQuAD normalisation)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def strip_answer_prefix(text: str) -> str:
    """Drop a leading "The answer is" / "Answer:" so verifiers see the answer itself."""
    return _ANSWER_PREFIX.sub("", text.strip())


def exact_match(prediction: str, reference: str) -> float:
    pred = normalize_answer(strip_answer_prefix(prediction))
    ref = normalize_answer(reference)
    if not ref:
        return float(pred == ref)
    return float(pred == ref or pred.endswith(" " + ref))


def last_number(text: str) -> float | None:
    """The last number written in ``text`` (thousands separators allowed), or None."""
    matches = _NUMBER.findall(text)
    if not matches:
        return None
    try:
        return float(matches[-1].replace(",", ""))
    except ValueError:
        return None


def numeric_match(prediction: str, reference: str) -> float:
    got = last_number(prediction)
    want = last_number(reference)
    if got is None or want is None:
        return 0.0
    return float(math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9))


def f1_score(prediction: str, reference: str) -> float:
    pred = normalize_answer(strip_answer_prefix(prediction)).split()
    ref = normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = Counter(pred) & Counter(ref)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(pred)
    recall = overlap / len(ref)
    return 2 * precision * recall / (precision + recall)


_VERIFIERS = {"exact": exact_match, "numeric": numeric_match, "f1": f1_score}


def verify(verifier: VerifierName, prediction: str | None, reference: str) -> float:
    """Score ``prediction`` against ``reference`` with the named verifier (None scores 0)."""
    if prediction is None:
        return 0.0
    return _VERIFIERS[verifier](prediction, reference)
