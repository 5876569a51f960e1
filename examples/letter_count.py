"""A custom tool and a custom reward: count a letter in a word with a `count` tool; the reward is the right
number plus a little for a short answer. Run from the repository root: arlkit train examples/letter_count.yaml"""

import random

from arlkit import TaskConfig, ToolEnv, tool

WORDS = ["banana", "letter", "mississippi", "committee", "bookkeeper", "balloon", "coffee", "assess"]


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
    em_label = "accuracy"

    def __init__(self, config: LetterConfig):
        self.config = config

    def rows(self, split: str, n: int, seed: int = 0) -> list[dict]:
        rng = random.Random(f"{split}-{seed}")
        words = WORDS[::2] if split == "heldout" else WORDS[1::2]  # held-out words are never trained on
        picks = [(i, w, rng.choice(w)) for i, w in enumerate(rng.choices(words, k=n))]
        return [{"id": i, "word": w, "letter": c, "answer": str(w.count(c))} for i, w, c in picks]

    def make_env(self) -> ToolEnv:
        weights = {"em": 1.0, "short": self.config.brevity_weight}
        return ToolEnv([count], LetterScorer(), max_turns=self.config.max_turns, reward_weights=weights)
