"""A Gymnasium environment with text observations and text actions, as an env of the message protocol.

Each observation becomes a user message (`str(obs)`, after the row's instructions on reset); the assistant's
message is the action, stripped (an action the env's `action_space` does not contain gets a feedback message
and the turn counts, so a policy that rambles learns to stop). Gymnasium's reward is the step reward,
`terminated or truncated` ends the episode; numeric entries of the final `info` are logged as `env/<name>`,
and its `is_success` (Gymnasium's convention for a reached goal) is the episode's `em`. Text only: the adapter
imports no gymnasium symbol, so it also takes a look-alike env.
"""

from __future__ import annotations

import numbers
from typing import Any

from arlkit.envs.message_env import EnvStep

__all__ = ["GymTextEnv"]


class GymTextEnv:
    """`env`, a `gymnasium.Env` (or anything with its reset/step), driven by messages; `instructions` opens
    the first user message; `max_turns` ends episodes the env itself does not (Gymnasium's truncation)."""

    def __init__(self, env: Any, instructions: str = "", max_turns: int = 8):
        self.env, self.instructions, self.max_turns = env, instructions, max_turns
        self.turns = self.invalid = 0

    def reset(self, row: dict) -> list[dict]:
        obs, _ = self.env.reset(seed=row.get("seed"), options=row.get("options"))
        self.turns = self.invalid = 0
        text = f"{self.instructions}\n\n{obs}" if self.instructions else str(obs)
        return [{"role": "user", "content": text}]

    def step(self, assistant_message: str) -> EnvStep:
        self.turns += 1
        action = assistant_message.strip()
        space = getattr(self.env, "action_space", None)
        if space is not None and not space.contains(action):
            self.invalid += 1
            return self._reply(f"Invalid action {action[:80]!r}; try again.", 0.0, False, {})
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self._reply(str(obs), float(reward), bool(terminated or truncated), info)

    def _reply(self, text: str, reward: float, done: bool, info: dict) -> EnvStep:
        done = done or self.turns >= self.max_turns
        metrics = {}
        if done:
            metrics = {k: float(v) for k, v in info.items() if isinstance(v, numbers.Real)}
            metrics["invalid_actions"] = float(self.invalid)
            if "is_success" in info:  # the Gymnasium convention for a goal reached: held-out EM
                metrics["em"] = float(info["is_success"])
        return EnvStep([{"role": "user", "content": text}], reward, done, {"metrics": metrics})
