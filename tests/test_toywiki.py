import math
import re
from collections import Counter, defaultdict

import pytest

from arlkit.data.toywiki import (
    DEFAULT_KINDS,
    FIRST_NAMES,
    LAST_NAMES,
    TEMPLATE_WORDS,
    Question,
    World,
    make_world,
    question_row,
)


@pytest.fixture(scope="module")
def world() -> World:
    return make_world(seed=0)


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def _all_names(w: World) -> list[str]:
    return [p.name for p in w.people] + list(w.cities) + list(w.orgs) + list(w.countries)


def test_same_seed_same_world_and_questions(world: World) -> None:
    again = make_world(seed=0)
    assert again == world
    assert again.questions("train", 200, seed=3) == world.questions("train", 200, seed=3)
    assert world.text_corpus() == again.text_corpus()


def test_different_seed_differs(world: World) -> None:
    other = make_world(seed=1)
    assert other.docs != world.docs
    assert world.questions("train", 50, seed=1) != world.questions("train", 50, seed=2)
    assert world.questions("train", 50) != world.questions("heldout", 50)


def test_sizes_and_every_country_has_a_city(world: World) -> None:
    assert (len(world.people), len(world.cities), len(world.orgs), len(world.countries)) == (1500, 40, 25, 12)
    assert set(world.cities.values()) == set(world.countries)
    assert len(world.docs) == 1500 + 40 + 25 + 12
    assert all(1900 <= p.birth_year <= 1999 for p in world.people)


def test_names_unique_and_not_template_words(world: World) -> None:
    names = _all_names(world)
    assert len(names) == len(set(names))
    assert len(set(FIRST_NAMES)) == len(FIRST_NAMES) >= 50
    assert len(set(LAST_NAMES)) == len(LAST_NAMES) >= 50
    name_words = {w for n in names for w in _words(n)}
    assert not name_words & TEMPLATE_WORDS
    # A single-word name must never equal one word of a person's name (e.g. a city called "Berg").
    single = {n.lower() for n in names if " " not in n}
    assert not single & {w.lower() for w in FIRST_NAMES + LAST_NAMES}
    assert all(re.fullmatch(r"[A-Za-z]+", w) for n in names for w in n.split())


def test_docs_mention_title_and_are_short(world: World) -> None:
    assert [d.id for d in world.docs] == list(range(len(world.docs)))
    for d in world.docs:
        assert d.title in d.text
        assert len(d.text.split()) < 30
        assert world.doc_by_title(d.title) is d
    with pytest.raises(KeyError):
        world.doc_by_title("Nobody")


def _expected(w: World, q: Question) -> str:
    """Recompute the answer by following the hops through the world's tables."""
    people = {p.name: p for p in w.people}
    p = people[q.hops[0]]
    if q.kind == "comparison":
        a, b = people[q.hops[0]], people[q.hops[1]]
        return a.name if a.birth_year < b.birth_year else b.name
    if q.kind == "1hop":
        if "year" in q.question:
            return str(p.birth_year)
        return p.works_for if "organisation" in q.question else p.born_in
    if q.kind == "2hop":
        if "employer" in q.question:
            assert q.hops[1] == p.works_for
            return w.orgs[q.hops[1]][0]
        assert q.hops[1] == p.born_in
        return w.cities[q.hops[1]]
    assert q.hops[1] == p.works_for and q.hops[2] == w.orgs[p.works_for][0]
    return w.cities[q.hops[2]]


def test_answers_follow_hops(world: World) -> None:
    hop_counts = {"1hop": 1, "2hop": 2, "comparison": 2, "3hop": 3}
    for split in ("train", "heldout"):
        for q in world.questions(split, 500, seed=7):
            assert q.answer == _expected(world, q)
            assert len(q.hops) == hop_counts[q.kind]
            assert tuple(world.docs[i].title for i in q.support) == q.hops
            assert all(name in q.question for name in q.people)


def test_heldout_split_is_disjoint(world: World) -> None:
    held = {p.name for p in world.people if p.heldout}
    assert len(held) == 300
    train_qs = world.questions("train", 2000, seed=1)
    held_qs = world.questions("heldout", 2000, seed=1)
    train_people = {n for q in train_qs for n in q.people}
    held_people = {n for q in held_qs for n in q.people}
    assert held_people <= held
    assert not train_people & held
    assert not train_people & held_people
    assert len({q.id for q in train_qs + held_qs}) == 4000


def test_comparison_answer_is_earlier_born(world: World) -> None:
    years = {p.name: p.birth_year for p in world.people}
    qs = world.questions("train", 300, kinds={"comparison": 1.0})
    assert {q.kind for q in qs} == {"comparison"}
    for q in qs:
        a, b = q.people
        assert years[a] != years[b]
        assert q.answer == min((a, b), key=years.__getitem__)


def test_kind_mix_matches_weights(world: World) -> None:
    counts = Counter(q.kind for q in world.questions("train", 2000, seed=5))
    for kind, weight in DEFAULT_KINDS.items():
        assert abs(counts[kind] / 2000 - weight) < 0.04
    custom = Counter(q.kind for q in world.questions("train", 2000, kinds={"1hop": 1, "3hop": 3}))
    assert set(custom) == {"1hop", "3hop"}
    assert abs(custom["3hop"] / 2000 - 0.75) < 0.04


def _bm25_top1(query: str, index: dict, lengths: list[int], k1: float = 1.5, b: float = 0.75) -> int:
    avg, n = sum(lengths) / len(lengths), len(lengths)
    scores: defaultdict[int, float] = defaultdict(float)
    for term in _words(query):
        postings = index.get(term, {})
        idf = math.log(1 + (n - len(postings) + 0.5) / (len(postings) + 0.5))
        for doc, tf in postings.items():
            scores[doc] += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * lengths[doc] / avg))
    return max(scores, key=scores.__getitem__)


def test_hop_query_retrieves_its_support_doc(world: World) -> None:
    # The design promise: searching exactly the entity name ranks that entity's doc first.
    index: defaultdict[str, Counter] = defaultdict(Counter)
    lengths = []
    for d in world.docs:
        words = _words(d.text)
        lengths.append(len(words))
        for t in words:
            index[t][d.id] += 1
    for q in world.questions("train", 300, seed=2):
        for hop, doc_id in zip(q.hops, q.support, strict=True):
            assert _bm25_top1(hop, index, lengths) == doc_id


def test_text_corpus_and_rows(world: World) -> None:
    corpus = world.text_corpus()
    assert len(corpus) == len(world.docs) + 7 * len(world.people)
    q = world.questions("heldout", 1)[0]
    assert corpus.count(q.question) >= 1 or q.kind == "comparison"
    row = question_row(q)
    assert set(row) == {"id", "question", "answer", "kind", "hops", "support", "people"}
    assert isinstance(row["hops"], list) and isinstance(row["support"], list)


def test_small_world_works() -> None:
    w = make_world(seed=3, n_people=20, n_cities=5, n_countries=5, n_orgs=3, heldout_frac=0.5)
    assert sum(p.heldout for p in w.people) == 10
    assert all(q.answer == _expected(w, q) for q in w.questions("heldout", 100))


@pytest.mark.parametrize(
    ("kwargs", "arg"),
    [
        ({"n_people": 1}, "n_people"),
        ({"n_people": 50 * 50 + 1}, "n_people"),
        ({"heldout_frac": 0.0}, "heldout_frac"),
        ({"heldout_frac": 1.0}, "heldout_frac"),
        ({"n_countries": 0}, "n_countries"),
        ({"n_cities": 5, "n_countries": 6}, "n_cities"),
        ({"n_orgs": 0}, "n_orgs"),
    ],
)
def test_bad_world_args_raise(kwargs: dict, arg: str) -> None:
    with pytest.raises(ValueError, match=arg):
        make_world(**kwargs)


def test_bad_question_args_raise(world: World) -> None:
    with pytest.raises(ValueError, match="split") as err:
        world.questions("test", 5)
    assert "heldout" in str(err.value)
    with pytest.raises(ValueError, match="kinds"):
        world.questions("train", 5, kinds={"4hop": 1.0})
    with pytest.raises(ValueError, match="kinds"):
        world.questions("train", 5, kinds={"1hop": 0.0})
    with pytest.raises(ValueError, match="n must"):
        world.questions("train", -1)


def test_sft_and_rl_splits_halve_the_train_people(world) -> None:
    people = {
        s: {n for q in world.questions(s, 400, seed=3) for n in q.people} for s in ("sft", "rl", "heldout")
    }
    assert people["sft"] and people["rl"]
    assert not people["sft"] & people["rl"]  # RL asks about people SFT never showed
    assert not (people["sft"] | people["rl"]) & people["heldout"]
    heldout_names = {p.name for p in world.people if p.heldout}
    assert not (people["sft"] | people["rl"]) & heldout_names


def test_redrawn_twin_keeps_train_names_and_redraws_their_facts(world: World) -> None:
    twin = world.redrawn(3)
    train = [p for p in world.people if not p.heldout]
    assert [p.name for p in twin.people] == [p.name for p in train]  # no held-out person in a twin
    assert not {d.title for d in twin.docs} & {p.name for p in world.people if p.heldout}
    assert set(twin.cities) == set(world.cities) and set(twin.orgs) == set(world.orgs)
    assert set(twin.cities.values()) == set(world.countries)  # every country still has a city
    # the facts are drawn again: most people's birth city differs (1 in n_cities agree by chance)
    same = sum(a.born_in == b.born_in for a, b in zip(train, twin.people, strict=True))
    assert same < len(train) * 0.2
    assert world.redrawn(3) == twin and world.redrawn(4) != twin  # deterministic in the twin index
    for q in twin.questions("train", 50, seed=1):  # questions follow the twin's own facts
        assert q.answer in " ".join(twin.doc_by_title(h).text for h in q.hops) or q.kind == "comparison"


def test_toywiki_demo_sources_spread_over_twins() -> None:
    from arlkit.tasks import ToyWikiTask

    task = ToyWikiTask(n_people=200)
    sources = task.demo_sources(40, seed=1)
    assert len(sources) == 40
    twins = [t.twin for t, _ in sources]
    assert twins[: task.demo_twins] == list(range(task.demo_twins))  # interleaved
    held = {p.name for p in task.world.people if p.heldout}
    for t, row in sources:
        assert not set(row["hops"]) & held
        # the row's answer is in its own twin's documents, searched through the twin's index
        hit = t.search(query=row["hops"][-1])
        assert row["kind"] == "comparison" or row["answer"] in str(hit)
