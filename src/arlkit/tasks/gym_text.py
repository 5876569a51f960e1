"""The `gymnasium` task: episodes of a Gymnasium environment with text observations and actions
(`task.env_id`), one seeded episode per row, driven through envs/gym_text.py.

`env_id` is a registered id, or `module:Env-v0` for an env that `module` registers when imported (Gymnasium's
own form; the working directory is importable). Needs the `gym` extra: `pip install 'arlkit[gym]'`.
"""

from __future__ import annotations

import random
from typing import Any, Literal

from pydantic import Field

from arlkit.config import TaskConfig
from arlkit.envs.gym_text import GymTextEnv
from arlkit.errors import ArlkitError
from arlkit.tasks.base import TASKS
from arlkit.tasks.resolve import cwd_importable

SEED_RANGE = 2**31  # train episodes draw seeds below it, held-out ones above: no held-out game is trained on


class GymnasiumTaskConfig(TaskConfig):
    name: Literal["gymnasium"] = "gymnasium"
    env_id: str  # a registered id, or "module:Env-v0"
    env_kwargs: dict[str, Any] = Field(default_factory=dict)  # passed to gymnasium.make
    instructions: str = ""  # opens the first user message, before the first observation
    max_turns: int = Field(8, gt=0)


@TASKS.register("gymnasium")
class GymnasiumTask:
    config_model = GymnasiumTaskConfig
    em_label = "success"

    def __init__(self, config: GymnasiumTaskConfig):
        try:
            import gymnasium
        except ImportError:
            raise ArlkitError("task 'gymnasium' needs gymnasium: pip install 'arlkit[gym]'") from None
        self.config, self._gym = config, gymnasium
        cwd_importable()
        self.make_env().env.close()  # a bad env_id fails here, at the start, not in the first rollout

    def rows(self, split: str, n: int, seed: int = 0) -> list[dict]:
        rng = random.Random(f"{split}-{seed}")
        low = SEED_RANGE if split == "heldout" else 0
        return [{"id": i, "seed": rng.randrange(low, low + SEED_RANGE)} for i in range(n)]

    def make_env(self) -> GymTextEnv:
        c = self.config
        try:
            env = self._gym.make(c.env_id, **c.env_kwargs)
        except Exception as e:  # gymnasium's own errors for a bad id or module: the config's fault
            raise ArlkitError(
                f"config field 'task.env_id': gymnasium cannot make {c.env_id!r}: {e}"
            ) from None
        return GymTextEnv(env, c.instructions, c.max_turns)
