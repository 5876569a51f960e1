"""ToySQL: a seeded SQLite shop database and template questions with gold SQL, for NL2SQL on a laptop.

Customers, products and orders. Every question is about one customer, named in quotes as a SQL literal would
be: with Qwen2's pre-tokenisation `'Ana Berg'` then has the same tokens in the question and in the query, so a
tiny model can copy it. Customer ids are a random sample, so the only ways to the right rows are to join on
the name or to look the id up with the `sql` tool; writing an id from memory works only for customers seen
in training. Part of the customers is held out and never appears in a train question.
"""

from __future__ import annotations

import random
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from arlkit.data.toywiki import FIRST_NAMES, LAST_NAMES
from arlkit.errors import ArlkitError

SCHEMA = (
    "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, city TEXT, born INTEGER);\n"
    "CREATE TABLE products (id INTEGER PRIMARY KEY, name TEXT, price INTEGER);\n"
    "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER REFERENCES customers(id), "
    "product_id INTEGER REFERENCES products(id), quantity INTEGER, year INTEGER);"
)
CITIES = (
    "Lorvik",
    "Dalmor",
    "Kestin",
    "Vexwen",
    "Marbar",
    "Tolholm",
    "Brinstad",
    "Corgard",
    "Fenby",
    "Galven",
)
PRODUCTS = (
    "Lamp", "Chair", "Desk", "Kettle", "Clock", "Radio", "Vase", "Mirror",
    "Rug", "Fan", "Sofa", "Shelf", "Bench", "Stool", "Teapot", "Candle",
)  # fmt: skip
SPLITS = ("train", "heldout", "sft", "rl")
_JOIN = "FROM orders JOIN customers ON customer_id = customers.id WHERE customers.name = '{c}'"
# kind -> (question, gold SQL through the id, gold SQL through the name); {c} name, {k} id
TEMPLATES: dict[str, tuple[str, str, str]] = {
    "orders": (
        "How many orders did customer '{c}' place?",
        "SELECT COUNT(*) FROM orders WHERE customer_id = {k}",
        "SELECT COUNT(*) " + _JOIN,
    ),
    "items": (
        "How many items did customer '{c}' buy in total?",
        "SELECT SUM(quantity) FROM orders WHERE customer_id = {k}",
        "SELECT SUM(quantity) " + _JOIN,
    ),
    "products": (
        "Which products did customer '{c}' buy?",
        "SELECT DISTINCT products.name FROM orders JOIN products ON product_id = products.id "
        "WHERE customer_id = {k}",
        "SELECT DISTINCT products.name FROM orders JOIN products ON product_id = products.id "
        "JOIN customers ON customer_id = customers.id WHERE customers.name = '{c}'",
    ),
    "years": (
        "In which years did customer '{c}' order, earliest first?",
        "SELECT DISTINCT year FROM orders WHERE customer_id = {k} ORDER BY year",
        "SELECT DISTINCT year " + _JOIN + " ORDER BY year",
    ),
    "city": (
        "In which city does customer '{c}' live?",
        "SELECT city FROM customers WHERE id = {k}",
        "SELECT city FROM customers WHERE name = '{c}'",
    ),
}
LOOKUP = "SELECT id FROM customers WHERE name = '{c}'"


@dataclass(frozen=True)
class Customer:
    id: int
    name: str
    city: str
    born: int
    heldout: bool


@dataclass(frozen=True)
class Shop:
    """The database content; `write(path)` saves it as SQLite."""

    customers: tuple[Customer, ...]
    products: tuple[tuple[int, str, int], ...]  # id, name, price
    orders: tuple[tuple[int, int, int, int, int], ...]  # id, customer_id, product_id, quantity, year
    seed: int

    def write(self, path: Path) -> None:
        conn = sqlite3.connect(path)
        try:
            conn.executescript(SCHEMA)
            conn.executemany(
                "INSERT INTO customers VALUES (?, ?, ?, ?)",
                [(c.id, c.name, c.city, c.born) for c in sorted(self.customers, key=lambda c: c.id)],
            )
            conn.executemany("INSERT INTO products VALUES (?, ?, ?)", self.products)
            conn.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?)", self.orders)
            conn.commit()
        finally:
            conn.close()

    def pool(self, split: str) -> list[Customer]:
        """Customers a split asks about; "sft" and "rl" halve the train customers (as toywiki's people)."""
        if split not in SPLITS:
            raise ArlkitError(f"toysql split must be one of {list(SPLITS)}, got {split!r}")
        if split == "heldout":
            return [c for c in self.customers if c.heldout]
        train = [c for c in self.customers if not c.heldout]
        return {"train": train, "sft": train[0::2], "rl": train[1::2]}[split]

    def questions(self, split: str, n: int, seed: int = 0) -> list[dict]:
        """`n` question rows about customers of `split`, deterministic from (shop seed, seed, split)."""
        rng = random.Random(f"toysql|{self.seed}|{seed}|{split}")
        pool, kinds = self.pool(split), sorted(TEMPLATES)
        rows = []
        for i in range(n):
            c, kind = rng.choice(pool), rng.choice(kinds)
            question, by_id, by_name = TEMPLATES[kind]
            rows.append(
                {
                    "id": f"{split}-{seed}-{i}",
                    "question": question.format(c=c.name),
                    "query": by_name.format(c=c.name),
                    "query_by_id": by_id.format(k=c.id),
                    "answer": by_name.format(c=c.name),  # what reports show as the gold answer
                    "kind": kind,
                    "customer": c.name,
                    "customer_id": c.id,
                }
            )
        return rows

    def text_corpus(self) -> list[str]:
        """Every question, both gold queries and the lookup for every customer, plus the schema."""
        texts = [SCHEMA]
        for c in self.customers:
            texts.append(LOOKUP.format(c=c.name))
            for question, by_id, by_name in TEMPLATES.values():
                texts += [question.format(c=c.name), by_id.format(k=c.id), by_name.format(c=c.name)]
        return texts


def make_shop(seed: int = 0, n_customers: int = 600, heldout_frac: float = 0.2) -> Shop:
    """Build the shop; a pure function of the arguments."""
    max_customers = len(FIRST_NAMES) * len(LAST_NAMES)
    if not isinstance(n_customers, int) or not 4 <= n_customers <= max_customers:
        raise ArlkitError(f"n_customers must be an int in [4, {max_customers}], got {n_customers!r}")
    if not 0 < heldout_frac < 1:
        raise ArlkitError(f"heldout_frac must be in the open interval (0, 1), got {heldout_frac!r}")
    rng = random.Random(seed)
    names = rng.sample([f"{f} {last}" for f in FIRST_NAMES for last in LAST_NAMES], n_customers)
    # three digits where they suffice (short to copy from an observation), shuffled: no pattern to guess
    ids = rng.sample(range(100, max(1000, 2 * n_customers)), n_customers)
    n_held = min(n_customers - 2, max(1, round(n_customers * heldout_frac)))
    held = set(rng.sample(range(n_customers), n_held))
    customers = tuple(
        Customer(ids[i], name, rng.choice(CITIES), rng.randint(1940, 2005), i in held)
        for i, name in enumerate(names)
    )
    products = tuple((i + 1, name, rng.randint(5, 500)) for i, name in enumerate(PRODUCTS))
    orders = []
    for c in customers:
        for _ in range(rng.randint(1, 5)):
            orders.append(
                (
                    len(orders) + 1,
                    c.id,
                    rng.randint(1, len(PRODUCTS)),
                    rng.randint(1, 9),
                    rng.randint(2015, 2024),
                )
            )
    return Shop(customers, products, tuple(orders), seed)
