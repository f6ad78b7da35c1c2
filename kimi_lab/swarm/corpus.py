"""A seeded synthetic corpus of fictional entities for wide and deep search tasks.

Every name is built from random syllables, so a model cannot know any fact
without looking it up. Entities link to one another (a company's founder and
chief executive are people, its headquarters a city; a city lies on a river and
has a mayor; a person was born in a city), which gives multi-hop questions.

The corpus holds two disjoint *worlds*, ``train`` and ``val``: links never cross
worlds, so tasks built from val entities share no entity (and no fact) with
train tasks, while search still runs over both worlds' documents.

Each entity is one short document ``doc-NNNN`` whose title is its name. ``attrs``
keeps the structured facts (links as doc ids) for task generation; a model only
ever sees ``title`` and ``text``. ``RELATIONS`` lists the two-hop questions the
links support, with the phrasing the tasks use.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

KINDS = ("company", "person", "city", "river")
WORLDS = ("train", "val")
LINKS = ("founder", "ceo", "headquarters", "birthplace", "river", "mayor")  # attrs holding doc ids


def _words(text: str) -> list[str]:
    return text.split()


_ONSETS = _words("b br c d dr f g gr h k kr l m n p pr r s st t tr v z th sh")
_VOWELS = _words("a e i o u a e o ia ei")
_CODAS = ["", "", "", "n", "r", "l", "s", "m", "nd", "th"]
_COMPANY_SUFFIXES = _words(
    "Industries Works Holdings Systems Labs Foundry Group Dynamics Collective Partners"
)
_COUNTRY_SUFFIXES = _words("ia land mar ora")
_INDUSTRIES = _words(
    "shipbuilding textiles robotics glassware aerospace pharmaceuticals publishing mining software brewing"
)
_OCCUPATIONS = _words("engineer economist chemist architect lawyer physician financier geologist")


@dataclass(frozen=True)
class Doc:
    id: str
    title: str
    text: str
    kind: str  # one of KINDS
    world: str  # one of WORLDS
    attrs: dict[str, Any] = field(default_factory=dict)


class Corpus:
    """Documents by id, and the entities of each (kind, world) for task generation."""

    def __init__(self, docs: list[Doc], seed: int | None = None) -> None:
        self.docs = list(docs)
        self.seed = seed
        self.by_id = {d.id: d for d in self.docs}
        if len(self.by_id) != len(self.docs):
            raise ValueError("corpus: duplicate document ids")

    def __len__(self) -> int:
        return len(self.docs)

    def entities(self, kind: str, world: str) -> list[Doc]:
        return [d for d in self.docs if d.kind == kind and d.world == world]

    def value(self, doc: Doc, attr: str) -> str:
        """An attribute as the document writes it (links as the linked entity's name)."""
        v = doc.attrs[attr]
        return self.by_id[v].title if attr in LINKS else display(v)

    def save(self, path: str | Path) -> None:
        """One JSON object per line; the first line is a header with the seed."""
        with Path(path).open("w") as f:
            f.write(json.dumps({"corpus": "swarm", "seed": self.seed, "docs": len(self.docs)}) + "\n")
            for d in self.docs:
                f.write(json.dumps(asdict(d), sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Corpus:
        lines = Path(path).read_text().splitlines()
        header = json.loads(lines[0])
        return cls([Doc(**json.loads(line)) for line in lines[1:] if line.strip()], header.get("seed"))


class _Names:
    """Fresh fictional words; every word is used once in the whole corpus so a name identifies one entity."""

    def __init__(self, rng: random.Random) -> None:
        self.rng, self.used = rng, set()

    def word(self, syllables: tuple[int, int] = (2, 3)) -> str:
        while True:
            n = self.rng.randint(*syllables)
            w = "".join(
                self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) + self.rng.choice(_CODAS)
                for _ in range(n)
            ).capitalize()
            if len(w) >= 4 and w not in self.used:
                self.used.add(w)
                return w

    def person(self) -> str:
        return f"{self.word((1, 2))} {self.word((2, 3))}"


def display(value: Any) -> str:
    """A fact as documents write it: thousands separators from 10,000 up (years stay plain)."""
    return f"{value:,}" if isinstance(value, int) and value >= 10_000 else str(value)


def _world(rng: random.Random, names: _Names, world: str, n_companies: int) -> dict[str, dict[str, Any]]:
    """One world's entities by temporary key; links point at keys."""
    n_cities = max(8, n_companies // 2)
    n_rivers = max(6, n_cities // 2)
    countries = [names.word((1, 2)) + rng.choice(_COUNTRY_SUFFIXES) for _ in range(4)]
    ents: dict[str, dict[str, Any]] = {}

    def new(kind: str, title: str, **attrs: Any) -> str:
        key = f"{world}-{kind}-{len(ents)}"
        ents[key] = {"key": key, "kind": kind, "title": title, "attrs": attrs}
        return key

    # Distinct lengths and populations keep superlative questions over rivers and cities well defined.
    lengths = rng.sample(range(120, 3200), n_rivers)
    rivers = [
        new("river", f"{names.word()} River", length=lengths[i], country=rng.choice(countries))
        for i in range(n_rivers)
    ]
    pops = rng.sample(range(50, 20_000), n_cities)
    cities = [
        new(
            "city",
            names.word(),
            country=rng.choice(countries),
            river=rng.choice(rivers),
            population=pops[i] * 100,
            founded=rng.randint(900, 1850),
        )
        for i in range(n_cities)
    ]

    def born(i: int) -> int:  # founders (even i below 2 * n_companies) are older than office holders
        return rng.randint(1890, 1975) if i < 2 * n_companies and i % 2 == 0 else rng.randint(1935, 1999)

    people = [
        new(
            "person",
            names.person(),
            birth_year=born(i),
            birthplace=rng.choice(cities),
            occupation=rng.choice(_OCCUPATIONS),
        )
        for i in range(2 * n_companies + n_cities + n_companies // 2)  # the last ones hold no office
    ]
    for i, city in enumerate(cities):
        ents[city]["attrs"]["mayor"] = people[2 * n_companies + i]
    for i in range(n_companies):
        founder, ceo = people[2 * i], people[2 * i + 1]
        new(
            "company",
            f"{names.word()} {rng.choice(_COMPANY_SUFFIXES)}",
            industry=rng.choice(_INDUSTRIES),
            founded=min(2020, ents[founder]["attrs"]["birth_year"] + rng.randint(24, 50)),
            founder=founder,
            ceo=ceo,
            headquarters=rng.choice(cities),
            employees=rng.randint(40, 90_000),
        )
    return ents


def _text(kind: str, title: str, a: dict[str, str], roles: list[str]) -> str:
    if kind == "company":
        return (
            f"{title} is a {a['industry']} company founded in {a['founded']} by {a['founder']}. "
            f"It is headquartered in {a['headquarters']}. Its chief executive is {a['ceo']}. "
            f"It employs {a['employees']} people."
        )
    if kind == "person":
        article = "an" if a["occupation"][0] in "aeiou" else "a"
        born = f"{title} is {article} {a['occupation']} born in {a['birth_year']} in {a['birthplace']}."
        return " ".join([born, *roles])
    if kind == "city":
        return (
            f"{title} is a city in {a['country']} on the {a['river']}. It was founded in {a['founded']} "
            f"and has a population of {a['population']}. Its mayor is {a['mayor']}."
        )
    return f"The {title} is a river in {a['country']}, {a['length']} km long."


def build_corpus(seed: int = 0, n_companies: int = 64, val_share: float = 0.25) -> Corpus:
    """The corpus for ``seed``: ``n_companies`` companies split between the worlds, and their people,
    cities and rivers (about 4.8 documents per company)."""
    rng = random.Random(f"swarm-corpus/{seed}")
    names = _Names(rng)
    n_val = max(4, round(n_companies * val_share))
    worlds = {**_world(rng, names, "train", max(4, n_companies - n_val)), **_world(rng, names, "val", n_val)}
    ents = list(worlds.values())
    # Shuffle before numbering: a document's id says nothing about its kind or world.
    order = list(range(len(ents)))
    rng.shuffle(order)
    ids = {ents[j]["key"]: f"doc-{i:04d}" for i, j in enumerate(order)}
    title = {e["key"]: e["title"] for e in ents}
    roles: dict[str, list[str]] = {e["key"]: [] for e in ents}
    for e in ents:
        a = e["attrs"]
        if e["kind"] == "company":
            roles[a["founder"]].append(f"{title[a['founder']]} founded {e['title']} in {a['founded']}.")
            roles[a["ceo"]].append(f"{title[a['ceo']]} is the chief executive of {e['title']}.")
        elif e["kind"] == "city":
            roles[a["mayor"]].append(f"{title[a['mayor']]} is the mayor of {e['title']}.")
    docs = []
    for e in ents:
        attrs = {k: ids[v] if k in LINKS else v for k, v in e["attrs"].items()}
        shown = {k: title[v] if k in LINKS else display(v) for k, v in e["attrs"].items()}
        text = _text(e["kind"], e["title"], shown, roles[e["key"]])
        world = e["key"].split("-")[0]
        docs.append(Doc(ids[e["key"]], e["title"], text, e["kind"], world, attrs))
    docs.sort(key=lambda d: d.id)
    return Corpus(docs, seed)


# ------------------------------------------------------------------ two-hop questions
@dataclass(frozen=True)
class Relation:
    """A two-hop question the corpus answers: from a ``root`` entity follow ``link``, read ``attr``."""

    name: str
    root: str
    link: str
    attr: str
    ask: str  # the sub-question, with {x} for the root's name
    each: str  # the wide phrase ("find the birth year of its chief executive")
    most: tuple[str, str] | None = None  # deep phrases for (argmax, argmin); numeric attrs only


RELATIONS = (
    Relation(
        "ceo_birth_year",
        "company",
        "ceo",
        "birth_year",
        "In which year was the chief executive of {x} born?",
        "the birth year of its chief executive",
        ("has the youngest chief executive", "has the oldest chief executive"),
    ),
    Relation(
        "founder_birth_year",
        "company",
        "founder",
        "birth_year",
        "In which year was the founder of {x} born?",
        "the birth year of its founder",
        ("has the youngest founder", "has the oldest founder"),
    ),
    Relation(
        "ceo_birthplace",
        "company",
        "ceo",
        "birthplace",
        "In which city was the chief executive of {x} born?",
        "the city where its chief executive was born",
    ),
    Relation(
        "founder_birthplace",
        "company",
        "founder",
        "birthplace",
        "In which city was the founder of {x} born?",
        "the city where its founder was born",
    ),
    Relation(
        "hq_population",
        "company",
        "headquarters",
        "population",
        "What is the population of the city where {x} is headquartered?",
        "the population of the city where it is headquartered",
        ("is headquartered in the most populous city", "is headquartered in the least populous city"),
    ),
    Relation(
        "hq_mayor",
        "company",
        "headquarters",
        "mayor",
        "Who is the mayor of the city where {x} is headquartered?",
        "the mayor of the city where it is headquartered",
    ),
    Relation(
        "river_length",
        "city",
        "river",
        "length",
        "How long, in km, is the river that {x} lies on?",
        "the length in km of the river it lies on",
        ("lies on the longest river", "lies on the shortest river"),
    ),
    Relation(
        "mayor_birth_year",
        "city",
        "mayor",
        "birth_year",
        "In which year was the mayor of {x} born?",
        "the birth year of its mayor",
        ("has the youngest mayor", "has the oldest mayor"),
    ),
    Relation(
        "birthplace_population",
        "person",
        "birthplace",
        "population",
        "What is the population of the city where {x} was born?",
        "the population of the city where they were born",
        ("was born in the most populous city", "was born in the least populous city"),
    ),
    Relation(
        "birthplace_river",
        "person",
        "birthplace",
        "river",
        "On which river lies the city where {x} was born?",
        "the river that their birthplace lies on",
    ),
)
