"""A text game in the general env protocol (reset -> messages, step -> messages, reward, done, info): guess a
number with "higher"/"lower" feedback. Run from the repository root: arlkit train examples/guess_number.yaml"""

import random
import re

from arlkit import EnvStep, TaskConfig


class GuessConfig(TaskConfig):
    max_turns: int = 5
    high: int = 16  # the secret is drawn from 1..high
    step_cost: float = 0.05  # paid per wrong guess, so fewer guesses score higher


class GuessEnv:
    def __init__(self, config: GuessConfig):
        self.config = config

    def reset(self, row: dict) -> list[dict]:
        self.secret, self.turns = row["answer"], 0
        return [{"role": "user", "content": row["question"]}]

    def step(self, assistant_message: str) -> EnvStep:
        self.turns += 1
        found = re.search(r"\d+", assistant_message)
        guess = int(found.group()) if found else None
        if guess == self.secret:
            return EnvStep([], 1.0, True, {"rewards": {"solved": 1.0}, "metrics": {"em": 1.0}})
        hint = "Reply with a number." if guess is None else "Higher." if guess < self.secret else "Lower."
        cost = {"rewards": {"step_cost": -self.config.step_cost}}
        if self.turns >= self.config.max_turns:
            return EnvStep([], -self.config.step_cost, True, {**cost, "metrics": {"em": 0.0}})
        return EnvStep([{"role": "user", "content": hint}], -self.config.step_cost, False, cost)


class GuessNumber:
    config_model = GuessConfig
    em_label = "solved"

    def __init__(self, config: GuessConfig):
        self.config = config

    def rows(self, split: str, n: int, seed: int = 0) -> list[dict]:
        rng, high = random.Random(f"{split}-{seed}"), self.config.high
        question = f"I picked a number from 1 to {high}. Guess it; I will say higher or lower."
        return [{"id": i, "question": question, "answer": rng.randint(1, high)} for i in range(n)]

    def make_env(self) -> GuessEnv:
        return GuessEnv(self.config)
