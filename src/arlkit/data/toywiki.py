"""ToyWiki: a seeded synthetic multi-hop QA world, the embedded default task.

A tiny LM learns to answer questions by searching a BM25 corpus holding one short document per entity.
Names are built to be few BPE tokens and never to collide with each other or with template words, so the
search query for a hop is exactly the entity name and that entity's own (shortest) document ranks first.
Part of the people is held out: no held-out person appears in any train question, which keeps eval honest.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from arlkit.errors import ArlkitError

FIRST_NAMES = (
    "Ana", "Boris", "Cara", "Dov", "Elin", "Femi", "Gus", "Hana", "Ivo", "Jana",
    "Kai", "Lena", "Milo", "Nia", "Otto", "Pia", "Quin", "Rosa", "Sven", "Tara",
    "Ugo", "Vera", "Wim", "Xena", "Yuri", "Zoe", "Arne", "Bea", "Cyril", "Dina",
    "Emil", "Fay", "Gil", "Hugo", "Ines", "Joel", "Kira", "Lars", "Mona", "Nils",
    "Olga", "Pavel", "Rita", "Saul", "Tove", "Ulla", "Vito", "Wanda", "Yara", "Zeno",
)  # fmt: skip
LAST_NAMES = (
    "Berg", "Lind", "Holm", "Dahl", "Falk", "Kron", "Moll", "Roth", "Vogt", "Brandt",
    "Eklund", "Frisk", "Hahn", "Ivers", "Jung", "Kuhn", "Lamm", "Nord", "Ostby", "Pohl",
    "Quast", "Rask", "Sauer", "Thal", "Ulm", "Vinter", "Wahl", "Yates", "Zorn", "Abbas",
    "Bauer", "Costa", "Diaz", "Engel", "Ferro", "Gallo", "Ilves", "Jokela", "Kato", "Lopes",
    "Mora", "Novak", "Okafor", "Petrov", "Rossi", "Sato", "Tanaka", "Urso", "Weber", "Zeller",
)  # fmt: skip

# Place names are head + tail; kind-specific tails let a tiny LM tell a city from a country by shape.
_HEADS = (
    "Lor", "Dal", "Kes", "Vex", "Mar", "Tol", "Brin", "Cor", "Fen", "Gal", "Hal", "Jor", "Kal", "Lun", "Mor",
    "Nor", "Pel", "Quor", "Ral", "Sel", "Tor", "Ul", "Var", "Wen", "Zan", "Ost", "Eld", "Ar", "Bel", "Dor",
)  # fmt: skip
_CITY_TAILS = ("vik", "mor", "tin", "wen", "bar", "holm", "stad", "gard", "by", "ven", "dal", "sund")
_COUNTRY_TAILS = ("ria", "via", "nia", "dor", "land", "stan")
_ORG_LINKS = ("a", "o", "i")
_ORG_SUFFIXES = ("corp", "tek", "dyne")
# Generated names that are English words (or stutter) would blur the line between names and prose.
_COMMON_WORDS = frozenset({"ardor", "armor", "martin", "fenland", "mormor", "wenwen", "daldal", "dordor"})

DEFAULT_KINDS: dict[str, float] = {"1hop": 0.35, "2hop": 0.35, "comparison": 0.15, "3hop": 0.15}
SPLITS = ("train", "heldout", "sft", "rl")
_MAX_CITIES, _MAX_COUNTRIES, _MAX_ORGS = 300, 150, 200  # below the inventories, leaving room for filtering

# kind -> template key -> text; the key selects how answer and hops are derived in World._resolve.
QUESTION_TEMPLATES: dict[str, dict[str, str]] = {
    "1hop": {
        "born_in": "Where was {p} born?",
        "works_for": "Which organisation does {p} work for?",
        "birth_year": "In which year was {p} born?",
    },
    "2hop": {
        "birth_country": "In which country was {p} born?",
        "employer_city": "In which city is the employer of {p} based?",
    },
    "comparison": {"earlier": "Who was born earlier, {p} or {q}?"},
    "3hop": {"employer_country": "In which country is the employer of {p} based?"},
}
DOC_TEMPLATES = {
    "person": "{name} was born in {city} in {year}. {name} works for {org}.",
    "city": "{name} is a city in {country}.",
    "org": "{name} is an organisation based in {city}, founded in {year}.",
    "country": "{name} is a country. Its cities include {cities}.",
}


def _template_words() -> frozenset[str]:
    texts = [t for d in QUESTION_TEMPLATES.values() for t in d.values()] + list(DOC_TEMPLATES.values())
    words = {w.lower() for t in texts for w in re.findall(r"[A-Za-z]+", re.sub(r"\{\w+\}", " ", t))}
    return frozenset(words | {"and"})  # "and" joins city lists in country docs


TEMPLATE_WORDS = _template_words()


class ToyWikiError(ArlkitError, ValueError):
    """Bad ToyWiki argument; a ValueError so callers can catch it either way."""


@dataclass(frozen=True)
class Doc:
    id: int
    title: str
    text: str


@dataclass(frozen=True)
class Person:
    name: str
    born_in: str
    birth_year: int
    works_for: str
    heldout: bool


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    answer: str
    kind: str
    hops: tuple[str, ...]
    support: tuple[int, ...]
    people: tuple[str, ...]


@dataclass(frozen=True)
class World:
    docs: tuple[Doc, ...]
    people: tuple[Person, ...]
    cities: dict[str, str]
    orgs: dict[str, tuple[str, int]]
    countries: tuple[str, ...]
    seed: int
    _by_title: dict[str, Doc] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_title", {d.title: d for d in self.docs})

    def doc_by_title(self, title: str) -> Doc:
        try:
            return self._by_title[title]
        except KeyError:
            raise KeyError(f"no ToyWiki document titled {title!r}") from None

    def redrawn(self, twin: int) -> World:
        """A twin of this world for SFT demonstrations: the same place and organisation names and the train
        people's names (held-out people are left out), with every relation drawn again from `twin`.

        Demonstrations spread over several twins show a name with different facts in each, so a tiny model
        cannot answer them from memory and has to learn to read the answer off the search results; trained
        on one world it memorises the facts of the people it saw instead, and never learns to copy.
        """
        rng = random.Random(f"toywiki-twin|{self.seed}|{twin}")
        city_names = tuple(self.cities)
        order = rng.sample(city_names, len(city_names))
        # as in make_world, the first cities cover every country once
        n = len(self.countries)
        cities = {c: self.countries[i] if i < n else rng.choice(self.countries) for i, c in enumerate(order)}
        cities = {c: cities[c] for c in city_names}  # keep the original doc order
        orgs = {o: (rng.choice(city_names), rng.randint(1800, 1990)) for o in self.orgs}
        org_names = tuple(self.orgs)
        people = tuple(
            Person(p.name, rng.choice(city_names), rng.randint(1900, 1999), rng.choice(org_names), False)
            for p in self.people
            if not p.heldout
        )
        return World(
            _make_docs(people, cities, orgs, self.countries), people, cities, orgs, self.countries, self.seed
        )

    def _pool(self, split: str) -> list[Person]:
        """People a split's questions are about. "sft" and "rl" halve the train people, so an RL stage can
        ask about people whose facts an SFT stage never showed (answering from memory fails on them, as
        on held-out people)."""
        if split == "heldout":
            return [p for p in self.people if p.heldout]
        train = [p for p in self.people if not p.heldout]
        return {"train": train, "sft": train[0::2], "rl": train[1::2]}[split]

    def questions(
        self, split: str, n: int, seed: int = 0, kinds: dict[str, float] | None = None
    ) -> list[Question]:
        """`n` questions about people of `split`; deterministic from (world seed, seed, split)."""
        if split not in SPLITS:
            raise ToyWikiError(f"split must be one of {list(SPLITS)}, got {split!r}")
        if not isinstance(n, int) or n < 0:
            raise ToyWikiError(f"n must be an int >= 0, got {n!r}")
        weights = _check_kinds(DEFAULT_KINDS if kinds is None else kinds)
        pool = self._pool(split)
        if weights.get("comparison", 0) > 0 and len({p.birth_year for p in pool}) < 2:
            raise ToyWikiError(
                f"comparison questions need two {split} people with different birth years, but the {split} "
                f"split has {len(pool)} people: raise n_people or move heldout_frac away from 0 and 1"
            )
        # A string seed hashes stably (sha512), unlike hash() of a tuple under PYTHONHASHSEED.
        rng = random.Random(f"toywiki|{self.seed}|{seed}|{split}")
        names = sorted(weights)
        out = []
        for i in range(n):
            kind = rng.choices(names, weights=[weights[k] for k in names])[0]
            key = rng.choice(sorted(QUESTION_TEMPLATES[kind]))
            p, q = rng.choice(pool), None
            if kind == "comparison":
                q = rng.choice(pool)
                while q.birth_year == p.birth_year:  # ends: pool has >= 2 distinct years
                    q = rng.choice(pool)
            out.append(self._question(f"{split}-{seed}-{i}", kind, key, p, q))
        return out

    def text_corpus(self) -> list[str]:
        """Docs plus every question template filled for every person, so each name is a frequent word."""
        texts = [d.text for d in self.docs]
        for i, p in enumerate(self.people):
            partner = self.people[(i + 1) % len(self.people)]
            for templates in QUESTION_TEMPLATES.values():
                texts.extend(t.format(p=p.name, q=partner.name) for t in templates.values())
        return texts

    def _question(self, qid: str, kind: str, key: str, p: Person, q: Person | None) -> Question:
        text = QUESTION_TEMPLATES[kind][key].format(p=p.name, q=q.name if q else "")
        answer, hops = self._resolve(key, p, q)
        support = tuple(self._by_title[h].id for h in hops)
        people = (p.name, q.name) if q else (p.name,)
        return Question(qid, text, answer, kind, hops, support, people)

    def _resolve(self, key: str, p: Person, q: Person | None) -> tuple[str, tuple[str, ...]]:
        """Answer and hop chain (entity names an expert would search, in order) for one template."""
        if key == "earlier":
            assert q is not None
            return (p.name if p.birth_year < q.birth_year else q.name), (p.name, q.name)
        org_city = self.orgs[p.works_for][0]
        chains = {
            "born_in": (p.born_in, (p.name,)),
            "works_for": (p.works_for, (p.name,)),
            "birth_year": (str(p.birth_year), (p.name,)),
            "birth_country": (self.cities[p.born_in], (p.name, p.born_in)),
            "employer_city": (org_city, (p.name, p.works_for)),
            "employer_country": (self.cities[org_city], (p.name, p.works_for, org_city)),
        }
        return chains[key]


def question_row(q: Question) -> dict:
    """The plain-dict row format environments take."""
    return {
        "id": q.id,
        "question": q.question,
        "answer": q.answer,
        "kind": q.kind,
        "hops": list(q.hops),
        "support": list(q.support),
        "people": list(q.people),
    }


def make_world(
    seed: int = 0,
    n_people: int = 1500,
    n_cities: int = 40,
    n_countries: int = 12,
    n_orgs: int = 25,
    heldout_frac: float = 0.2,
) -> World:
    """Build the world; everything is a pure function of the arguments."""
    _check_world_args(n_people, n_cities, n_countries, n_orgs, heldout_frac)
    rng = random.Random(seed)
    taken = {w.lower() for w in FIRST_NAMES + LAST_NAMES}
    countries = _pick_names(rng, [h + t for h in _HEADS for t in _COUNTRY_TAILS], n_countries, taken)
    city_names = _pick_names(rng, [h + t for h in _HEADS for t in _CITY_TAILS], n_cities, taken)
    org_pool = [h + v + s for h in _HEADS for v in _ORG_LINKS for s in _ORG_SUFFIXES]
    org_names = _pick_names(rng, org_pool, n_orgs, taken)
    # The first cities cover every country once so each country doc lists at least one city.
    cities = {c: countries[i] if i < n_countries else rng.choice(countries) for i, c in enumerate(city_names)}
    orgs = {o: (rng.choice(city_names), rng.randint(1800, 1990)) for o in org_names}
    people = _make_people(rng, n_people, city_names, org_names, heldout_frac)
    docs = _make_docs(people, cities, orgs, countries)
    return World(docs, people, cities, orgs, countries, seed)


def _check_world_args(n_people: int, n_cities: int, n_countries: int, n_orgs: int, frac: float) -> None:
    max_people = len(FIRST_NAMES) * len(LAST_NAMES)
    checks = [
        ("n_people", n_people, 2, max_people),
        ("n_countries", n_countries, 1, _MAX_COUNTRIES),
        ("n_cities", n_cities, n_countries, _MAX_CITIES),
        ("n_orgs", n_orgs, 1, _MAX_ORGS),
    ]
    for name, value, lo, hi in checks:
        if not isinstance(value, int) or not lo <= value <= hi:
            raise ToyWikiError(f"{name} must be an int in [{lo}, {hi}], got {value!r}")
    if not isinstance(frac, (int, float)) or not 0 < frac < 1:
        raise ToyWikiError(f"heldout_frac must be in the open interval (0, 1), got {frac!r}")


def _check_kinds(kinds: dict[str, float]) -> dict[str, float]:
    unknown = sorted(set(kinds) - set(QUESTION_TEMPLATES))
    if unknown:
        raise ToyWikiError(f"kinds has unknown kind(s) {unknown}; valid kinds: {sorted(QUESTION_TEMPLATES)}")
    if any(w < 0 for w in kinds.values()) or sum(kinds.values()) <= 0:
        raise ToyWikiError(f"kinds weights must be >= 0 with a positive sum, got {kinds}")
    return {k: float(w) for k, w in kinds.items() if w > 0}


def _pick_names(rng: random.Random, candidates: list[str], n: int, taken: set[str]) -> tuple[str, ...]:
    """Draw n distinct names, skipping ones already used, template words and English words."""
    pool = sorted(candidates)
    rng.shuffle(pool)
    picked = []
    for name in pool:
        low = name.lower()
        if low in taken or low in TEMPLATE_WORDS or low in _COMMON_WORDS:
            continue
        taken.add(low)
        picked.append(name)
        if len(picked) == n:
            return tuple(picked)
    raise ToyWikiError(f"ran out of distinct names: wanted {n}, found {len(picked)}")


def _make_people(
    rng: random.Random, n: int, cities: tuple[str, ...], orgs: tuple[str, ...], frac: float
) -> tuple[Person, ...]:
    names = rng.sample([f"{f} {last}" for f in FIRST_NAMES for last in LAST_NAMES], n)
    n_held = min(n - 1, max(1, round(n * frac)))  # both splits must be non-empty
    held = set(rng.sample(range(n), n_held))
    return tuple(
        Person(name, rng.choice(cities), rng.randint(1900, 1999), rng.choice(orgs), i in held)
        for i, name in enumerate(names)
    )


def _make_docs(
    people: tuple[Person, ...],
    cities: dict[str, str],
    orgs: dict[str, tuple[str, int]],
    countries: tuple[str, ...],
) -> tuple[Doc, ...]:
    # Places first, so their doc ids do not shift when n_people changes.
    texts = [
        (c, DOC_TEMPLATES["country"].format(name=c, cities=_join([k for k, v in cities.items() if v == c])))
        for c in countries
    ]
    texts += [(c, DOC_TEMPLATES["city"].format(name=c, country=k)) for c, k in cities.items()]
    texts += [(o, DOC_TEMPLATES["org"].format(name=o, city=c, year=y)) for o, (c, y) in orgs.items()]
    texts += [
        (
            p.name,
            DOC_TEMPLATES["person"].format(name=p.name, year=p.birth_year, city=p.born_in, org=p.works_for),
        )
        for p in people
    ]
    return tuple(Doc(i, title, text) for i, (title, text) in enumerate(texts))


def _join(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
