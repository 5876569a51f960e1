"""Seeded arithmetic word problems with two operations on two-digit numbers, for math with a python tool.

A tiny model cannot add or multiply two-digit numbers in its head; a program can. Each problem's split is
a hash of its template and numbers, so the held-out problems never occur in training.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from arlkit.data.toywiki import FIRST_NAMES
from arlkit.errors import ArlkitError
from arlkit.tools.calculator import calculator

SPLITS = ("train", "heldout", "sft", "rl")
_SPLIT_BUCKETS = {"heldout": range(0, 2), "sft": range(2, 6), "rl": range(6, 10), "train": range(2, 10)}


@dataclass(frozen=True)
class Template:
    text: str  # {a} a name; {x} {y} {z} numbers
    first: str  # the first operation, as Python
    full: str  # the whole computation, as Python


TEMPLATES: dict[str, Template] = {
    "buy_give": Template(
        "{a} has {x} apples, buys {y} more and gives {z} away. How many apples does {a} have now?",
        "{x} + {y}",
        "{x} + {y} - {z}",
    ),
    "rate_extra": Template(
        "A shop sells {x} pens a day for {y} days, then {z} more. How many pens does it sell in all?",
        "{x} * {y}",
        "{x} * {y} + {z}",
    ),
    "earn_spend": Template(
        "{a} earns {x} coins a week for {y} weeks and spends {z}. How many coins are left?",
        "{x} * {y}",
        "{x} * {y} - {z}",
    ),
    "share_bonus": Template(
        "{x} cards are shared equally by {y} players, then each gets {z} more. How many cards does each "
        "player have?",
        "{x} // {y}",
        "{x} // {y} + {z}",
    ),
}


def _numbers(rng: random.Random, kind: str) -> dict[str, int]:
    x, y, z = rng.randint(11, 99), rng.randint(11, 99), rng.randint(11, 99)
    if kind == "share_bonus":
        y = rng.randint(2, 9)
        x = y * rng.randint(11, 99)  # shares are whole
    return {"x": x, "y": y, "z": z}


def _bucket(kind: str, nums: dict[str, int]) -> int:
    blob = f"{kind}|{nums['x']}|{nums['y']}|{nums['z']}".encode()
    return int(hashlib.sha256(blob).hexdigest(), 16) % 10


def problem_row(kind: str, name: str, nums: dict[str, int], pid: str) -> dict:
    t = TEMPLATES[kind]
    full = t.full.format(**nums)
    return {
        "id": pid,
        "question": t.text.format(a=name, **nums),
        "answer": calculator(expression=full).text,  # the safe AST evaluator, not eval()
        "kind": kind,
        "first_step": t.first.format(**nums),
        "expression": full,
    }


def problems(seed: int, split: str, n: int) -> list[dict]:
    """`n` problems of `split`, deterministic from (seed, split)."""
    if split not in SPLITS:
        raise ArlkitError(f"math split must be one of {list(SPLITS)}, got {split!r}")
    rng = random.Random(f"mathword|{seed}|{split}")
    kinds, out = sorted(TEMPLATES), []
    while len(out) < n:
        kind = rng.choice(kinds)
        nums = _numbers(rng, kind)
        name = rng.choice(FIRST_NAMES)
        if _bucket(kind, nums) in _SPLIT_BUCKETS[split]:
            out.append(problem_row(kind, name, nums, f"{split}-{seed}-{len(out)}"))
    return out
