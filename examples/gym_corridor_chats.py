"""Write a poor player's walks in the corridor as OpenAI-format conversations, for `arlkit sft sft.data=...`:
they teach a base the game's action words (left, right) but not the way out, which RL then learns.
python examples/gym_corridor_chats.py 400 > corridor_chats.jsonl   (from the examples folder)"""

import json
import random
import sys

from arlkit.tasks.gym_text import GymnasiumTask, GymnasiumTaskConfig

task = GymnasiumTask(GymnasiumTaskConfig(name="gymnasium", env_id="gym_corridor:Corridor-v0", max_turns=6))
rng = random.Random(0)
for row in task.rows("train", int(sys.argv[1]), seed=123):
    env = task.make_env()
    messages = env.reset(row)
    for _ in range(6):
        move = rng.choice(["left", "left", "right"])  # a poor player: the action words, not the way out
        messages.append({"role": "assistant", "content": move})
        step = env.step(move)
        if step.done:
            break
        messages += step.messages
    print(json.dumps({"messages": messages}))
