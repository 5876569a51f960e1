"""A Gymnasium text game: walk a corridor to its exit by saying "left" or "right". Importing this module
registers Corridor-v0; run from the repository root: arlkit train examples/gym_corridor.yaml"""

import re
import string

import gymnasium as gym
from gymnasium import spaces


class Corridor(gym.Env):
    def __init__(self, length: int = 5):
        self.length = length
        self.observation_space = spaces.Text(max_length=200, charset=string.printable)
        self.action_space = spaces.Text(max_length=200, charset=string.printable)  # any short message

    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[str, dict]:
        super().reset(seed=seed)
        self.pos = int(self.np_random.integers(0, self.length - 1))
        return self._observation(), {}

    def step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        words = re.findall(r"[a-z]+", action.lower())
        move = ("right" in words) - ("left" in words)  # both or neither: no move
        self.pos = min(max(self.pos + move, 0), self.length - 1)
        arrived = self.pos == self.length - 1
        # reward only the exit: a cost per move would pay more to invalid actions (0 reward) than to moves
        return self._observation(), float(arrived), arrived, False, {"is_success": arrived}

    def _observation(self) -> str:
        return f"You are in room {self.pos}; the exit is room {self.length - 1}. Say left or right."


gym.register("Corridor-v0", entry_point=Corridor)
