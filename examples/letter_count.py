"""A custom `count` tool and a two-part reward. From the repo root: arlkit train examples/letter_count.yaml"""

import random

from arlkit import TaskConfig, ToolEnv, tool


@tool
def count(word: str, letter: str) -> str:
    """Count how often a letter occurs in a word.

    Args:
        word: the word to look in
        letter: the letter to count
    """
    return str(word.count(letter))


class LetterConfig(TaskConfig):
    brevity_weight: float = 0.1  # the reward for an answer of at most 3 characters


class LetterScorer:
    def prompt(self, row: dict) -> str:
        return f"How many '{row['letter']}' are in '{row['word']}'? Answer as <answer>N</answer>."

    def score(self, answer: str | None, row: dict) -> dict[str, float]:
        text = (answer or "").strip()
        return {"em": float(text == row["answer"]), "short": float(0 < len(text) <= 3)}


class LetterCount:
    config_model = LetterConfig

    def __init__(self, config: LetterConfig):
        self.config = config

    def rows(self, split: str, n: int, seed: int = 0) -> list[dict]:
        rng, rows = random.Random(f"{split}-{seed}"), []
        while len(rows) < n:  # made-up words, answers 0-3 equally often: only the tool gets them right
            c, k = rng.choice("abdeilmnorst"), rng.randint(0, 3)
            chars = rng.sample([x for x in "abdeilmnorst" if x != c], rng.randint(3, 6)) + [c] * k
            word = "".join(rng.sample(chars, len(chars)))
            if (word[0] in "aeio") == (split == "heldout"):  # held-out words are never trained on
                rows.append({"id": len(rows), "word": word, "letter": c, "answer": str(k)})
        return rows

    def make_env(self) -> ToolEnv:
        weights = {"em": 1.0, "short": self.config.brevity_weight}
        return ToolEnv([count], LetterScorer(), max_turns=self.config.max_turns, reward_weights=weights)
