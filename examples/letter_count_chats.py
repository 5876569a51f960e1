"""Write OpenAI-format conversations that solve the letter task, for `arlkit sft sft.data=...`: the cold
start of a base that cannot act in the env yet. python examples/letter_count_chats.py 400 > chats.jsonl"""

import json
import sys

from letter_count import LetterConfig, LetterCount

task = LetterCount(LetterConfig(name="letter_count"))
env = task.make_env()
for row in task.rows("train", int(sys.argv[1]), seed=123):
    call = {"name": "count", "arguments": json.dumps({"word": row["word"], "letter": row["letter"]})}
    messages = [
        *env.reset(row),
        {"role": "assistant", "content": "", "tool_calls": [{"id": "c0", "type": "function", "function": call}]},
        {"role": "tool", "tool_call_id": "c0", "content": row["answer"]},
        {"role": "assistant", "content": f"<answer>{row['answer']}</answer>"},
    ]
    print(json.dumps({"messages": messages, "tools": env.prompt_tools}))
