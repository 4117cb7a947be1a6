"""A generated knowledge base and the two suites that search it: knowledge and deep search.

The base is a small made-up world (people, cities, countries, companies) generated from a seed,
so no model can know it beforehand: the only way to answer is to search the corpus, which is one
document per entity written in plain sentences. ``corpus()`` yields the JSON-lines records that
``tepo-agent index`` turns into the FTS5 search index.

- knowledge: one or two hops ("Where was X born?", "In which country was X born?").
- deep search: three or four hops ("What is the capital of the country where the founder of Y was
  born?").
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tepo_agent.tasks.base import Task

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


class KnowledgeBase:
    """A seeded made-up world; the same seed always yields the same facts and corpus."""

    def __init__(
        self,
        *,
        seed: int = 0,
        countries: int = 8,
        cities: int = 24,
        people: int = 60,
        companies: int = 20,
    ) -> None:
        rng = random.Random(f"kb:{seed}")
        used: set[str] = set()

        def fresh(syllables: int) -> str:
            while True:
                name = _word(rng, syllables)
                if name not in used:
                    used.add(name)
                    return name

        country_names = [fresh(3) for _ in range(countries)]
        city_list = [City(fresh(2) + "ia", country_names[i % countries]) for i in range(cities)]
        self.cities = {c.name: c for c in city_list}
        self.countries = {
            name: Country(name, city_list[i].name) for i, name in enumerate(country_names)
        }
        self.people = {}
        for _ in range(people):
            name = f"{fresh(2)} {fresh(2)}"
            self.people[name] = Person(name, rng.choice(_PROFESSIONS), rng.choice(city_list).name)
        founders = rng.sample(sorted(self.people), companies)
        self.companies = {}
        for founder in founders:
            name = fresh(2) + "corp"
            self.companies[name] = Company(name, founder, rng.choice(city_list).name)

    def corpus(self) -> Iterator[dict[str, str]]:
        """One document per entity: ``{"id", "title", "text"}``."""
        for p in self.people.values():
            yield {
                "id": f"person:{p.name}",
                "title": p.name,
                "text": f"{p.name} is a {p.profession}. {p.name} was born in {p.birth_city}.",
            }
        for c in self.cities.values():
            yield {
                "id": f"city:{c.name}",
                "title": c.name,
                "text": f"{c.name} is a city in {c.country}.",
            }
        for k in self.countries.values():
            yield {
                "id": f"country:{k.name}",
                "title": k.name,
                "text": f"{k.name} is a country. The capital of {k.name} is {k.capital}.",
            }
        for co in self.companies.values():
            yield {
                "id": f"company:{co.name}",
                "title": co.name,
                "text": f"{co.name} is a company founded by {co.founder}. "
                f"Its headquarters are in {co.headquarters}.",
            }

    def write_corpus(self, path: str | Path) -> Path:
        """Write the corpus as JSON lines (the input of ``tepo-agent index``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as f:
            for doc in self.corpus():
                f.write(json.dumps(doc) + "\n")
        return path


def knowledge_suite(kb: KnowledgeBase, n: int, *, seed: int = 0) -> list[Task]:
    """One- and two-hop questions about people."""
    rng = random.Random(f"knowledge:{seed}")
    people = sorted(kb.people.values(), key=lambda p: p.name)
    tasks = []
    for i in range(n):
        p = rng.choice(people)
        kind = rng.choice(("birth_city", "profession", "birth_country"))
        if kind == "birth_city":
            question, answer, hops = f"Where was {p.name} born?", p.birth_city, 1
        elif kind == "profession":
            question, answer, hops = f"What is the profession of {p.name}?", p.profession, 1
        else:
            question = f"In which country was {p.name} born?"
            answer, hops = kb.cities[p.birth_city].country, 2
        tasks.append(
            Task(
                id=f"knowledge-{seed}-{i}",
                suite="knowledge",
                question=question,
                answer=answer,
                verifier="exact",
                metadata={"hops": hops, "person": p.name, "kind": kind},
            )
        )
    return tasks


def deep_search_suite(kb: KnowledgeBase, n: int, *, seed: int = 0) -> list[Task]:
    """Three- and four-hop chains through companies, founders, cities and countries."""
    rng = random.Random(f"deep_search:{seed}")
    companies = sorted(kb.companies.values(), key=lambda c: c.name)
    tasks = []
    for i in range(n):
        co = rng.choice(companies)
        founder = kb.people[co.founder]
        country = kb.cities[founder.birth_city].country
        if rng.random() < 0.5:
            question = f"In which country was the founder of {co.name} born?"
            answer, hops = country, 3
        else:
            question = (
                f"What is the capital of the country where the founder of {co.name} was born?"
            )
            answer, hops = kb.countries[country].capital, 4
        tasks.append(
            Task(
                id=f"deep_search-{seed}-{i}",
                suite="deep_search",
                question=question,
                answer=answer,
                verifier="exact",
                metadata={"hops": hops, "company": co.name},
            )
        )
    return tasks
