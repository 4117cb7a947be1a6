"""A generated knowledge base and the two suites that search it: knowledge and deep search.

A world has two parts (see docs/world.md):

- **common knowledge**: a small fixed set of entities (``COMMON_SIZES``, generated once from a
  fixed seed) that is the same in every world. The default model is taught its facts, so
  questions about them need no tool.
- **the world's own entities**: people, cities, countries and companies generated from the
  world's seed, which no model can know beforehand: the only way to answer is to search the
  corpus. Training worlds have seeds below ``EVAL_SEED``; held-out worlds have seeds at or
  above it, and their names are drawn from a disjoint half of the name space (a hash split), so
  no held-out entity can ever occur in a training world.

The corpus is one document per entity (both parts), written in plain sentences; ``corpus()``
yields the JSON-lines records that ``tepo-agent index`` turns into the FTS5 search index.

- knowledge: one or two hops ("Where was X born?", "In which country was X born?", "Who founded
  Y?", "Where was Y founded?").
- deep search: three or four hops ("What is the capital of the country where the founder of Y
  was born?").

Each suite's items that need no tool (about common-knowledge entities) are every
``1/NO_TOOL_SHARE``-th item, so exactly ``floor(n * NO_TOOL_SHARE)`` of ``n`` items need none
and the items for ``n`` are a prefix of those for any larger ``n``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tepo_agent.tasks.base import (
    NO_TOOL_SHARE,
    Task,
    name_half,
    no_tool_item,
    seed_half,
)

COMMON_SEED = -1
"""Seed of the common-knowledge part (fixed: every world shares it)."""

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "th", "br", "kr")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou")
_CODAS = ("", "n", "r", "s", "l", "x", "m")
_PROFESSIONS = ("chemist", "painter", "engineer", "pilot", "farmer", "poet", "doctor", "judge")


def _word(rng: random.Random, syllables: int) -> str:
    parts = [
        rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables)
    ]
    return "".join(parts).capitalize()


@dataclass(frozen=True)
class Person:
    name: str
    profession: str
    birth_city: str


@dataclass(frozen=True)
class City:
    name: str
    country: str


@dataclass(frozen=True)
class Country:
    name: str
    capital: str


@dataclass(frozen=True)
class Company:
    name: str
    founder: str
    headquarters: str


@dataclass
class Facts:
    """The entities of one part of a world, by name."""

    people: dict[str, Person] = field(default_factory=dict)
    cities: dict[str, City] = field(default_factory=dict)
    countries: dict[str, Country] = field(default_factory=dict)
    companies: dict[str, Company] = field(default_factory=dict)

    def names(self) -> set[str]:
        return {*self.people, *self.cities, *self.countries, *self.companies}


@dataclass(frozen=True)
class WorldSizes:
    """How many entities of each kind a part of a world has."""

    countries: int
    cities: int
    people: int
    companies: int


COMMON_SIZES = WorldSizes(countries=4, cities=8, people=10, companies=6)
"""The common-knowledge part: 10 people, 6 companies (and their cities and countries)."""

WORLD_SIZES = WorldSizes(countries=6, cities=18, people=40, companies=16)
"""Each world's own part."""


def _generate(rng: random.Random, sizes: WorldSizes, used: set[str], half: int | None) -> Facts:
    def fresh(syllables: int, suffix: str = "") -> str:
        while True:
            name = _word(rng, syllables) + suffix
            if name not in used and (half is None or name_half(name) == half):
                used.add(name)
                return name

    facts = Facts()
    country_names = [fresh(3) for _ in range(sizes.countries)]
    city_list = [
        City(fresh(2, "ia"), country_names[i % sizes.countries]) for i in range(sizes.cities)
    ]
    facts.cities = {c.name: c for c in city_list}
    facts.countries = {n: Country(n, city_list[i].name) for i, n in enumerate(country_names)}
    for _ in range(sizes.people):
        first = fresh(2)
        name = f"{first} {fresh(2)}"
        used.add(name)
        facts.people[name] = Person(name, rng.choice(_PROFESSIONS), rng.choice(city_list).name)
    for founder in rng.sample(sorted(facts.people), sizes.companies):
        name = fresh(2, "corp")
        facts.companies[name] = Company(name, founder, rng.choice(city_list).name)
    return facts


def common_knowledge() -> Facts:
    """The fixed common-knowledge part every world shares (what the default model is taught)."""
    return _generate(random.Random(f"kb:{COMMON_SEED}"), COMMON_SIZES, set(), None)


class KnowledgeBase:
    """A seeded made-up world: the common-knowledge part plus entities of its own.

    The same seed always yields the same facts and corpus. ``people``, ``cities``, ``countries``
    and ``companies`` hold both parts; ``common`` and ``own`` hold each part.
    """

    def __init__(self, *, seed: int = 0, sizes: WorldSizes = WORLD_SIZES) -> None:
        self.seed = seed
        self.common = common_knowledge()
        used = self.common.names() | {w for n in self.common.people for w in n.split()}
        half = seed_half(seed)
        self.own = _generate(random.Random(f"kb:{seed}"), sizes, used, half)
        self.people = {**self.common.people, **self.own.people}
        self.cities = {**self.common.cities, **self.own.cities}
        self.countries = {**self.common.countries, **self.own.countries}
        self.companies = {**self.common.companies, **self.own.companies}

    def corpus(self) -> Iterator[dict[str, str]]:
        """One short document per entity: ``{"id", "title", "text"}`` (each states one or two
        facts; short, because the default model reads search results on every hop)."""
        for p in self.people.values():
            yield {
                "id": f"person:{p.name}",
                "title": p.name,
                "text": f"{p.name} is a {p.profession} born in {p.birth_city}.",
            }
        for c in self.cities.values():
            yield {"id": f"city:{c.name}", "title": c.name, "text": f"{c.name} is in {c.country}."}
        for k in self.countries.values():
            yield {
                "id": f"country:{k.name}",
                "title": k.name,
                "text": f"The capital of {k.name} is {k.capital}.",
            }
        for co in self.companies.values():
            yield {
                "id": f"company:{co.name}",
                "title": co.name,
                "text": f"{co.name} was founded by {co.founder} in {co.headquarters}.",
            }

    def write_corpus(self, path: str | Path) -> Path:
        """Write the corpus as JSON lines (the input of ``tepo-agent index``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as f:
            for doc in self.corpus():
                f.write(json.dumps(doc) + "\n")
        return path


_KNOWLEDGE_KINDS = ("birth_city", "birth_country", "founder", "founded_in")


def _knowledge_item(kb: KnowledgeBase, part: Facts, rng: random.Random) -> tuple[str, ...]:
    """(kind, question, answer, entity) of one knowledge question about ``part``."""
    kind = rng.choice(_KNOWLEDGE_KINDS)
    if kind in ("birth_city", "birth_country"):
        p = rng.choice(sorted(part.people.values(), key=lambda x: x.name))
        if kind == "birth_city":
            return kind, f"Where was {p.name} born?", p.birth_city, p.name
        country = kb.cities[p.birth_city].country
        return kind, f"In which country was {p.name} born?", country, p.name
    co = rng.choice(sorted(part.companies.values(), key=lambda x: x.name))
    if kind == "founder":
        return kind, f"Who founded {co.name}?", co.founder, co.name
    return kind, f"Where was {co.name} founded?", co.headquarters, co.name


_HOPS = {"birth_city": 1, "birth_country": 2, "founder": 1, "founded_in": 1}


def knowledge_suite(
    kb: KnowledgeBase, n: int, *, seed: int = 0, no_tool_share: float = NO_TOOL_SHARE
) -> list[Task]:
    """One- and two-hop questions about people and companies (``no_tool_share`` of them about
    common-knowledge entities, answerable without a tool)."""
    rng = random.Random(f"knowledge:{seed}")
    tasks = []
    for i in range(n):
        common = no_tool_item(i, no_tool_share)
        kind, question, answer, entity = _knowledge_item(kb, kb.common if common else kb.own, rng)
        tasks.append(
            Task(
                id=f"knowledge-{seed}-{i}",
                suite="knowledge",
                question=question,
                answer=answer,
                verifier="exact",
                needs_tool=not common,
                metadata={"hops": _HOPS[kind], "entity": entity, "kind": kind},
            )
        )
    return tasks


def deep_search_suite(
    kb: KnowledgeBase, n: int, *, seed: int = 0, no_tool_share: float = NO_TOOL_SHARE
) -> list[Task]:
    """Three- and four-hop chains through companies, founders, cities and countries
    (``no_tool_share`` of them about common-knowledge companies)."""
    rng = random.Random(f"deep_search:{seed}")
    tasks = []
    for i in range(n):
        common = no_tool_item(i, no_tool_share)
        part = kb.common if common else kb.own
        co = rng.choice(sorted(part.companies.values(), key=lambda c: c.name))
        founder = kb.people[co.founder]
        country = kb.cities[founder.birth_city].country
        if rng.random() < 0.5:
            question = f"In which country was the founder of {co.name} born?"
            answer, hops, kind = country, 3, "founder_country"
        else:
            question = (
                f"What is the capital of the country where the founder of {co.name} was born?"
            )
            answer, hops, kind = kb.countries[country].capital, 4, "founder_capital"
        tasks.append(
            Task(
                id=f"deep_search-{seed}-{i}",
                suite="deep_search",
                question=question,
                answer=answer,
                verifier="exact",
                needs_tool=not common,
                metadata={"hops": hops, "entity": co.name, "company": co.name, "kind": kind},
            )
        )
    return tasks
