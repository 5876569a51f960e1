"""A tool-calling agent written against the OpenAI SDK only; arlkit trains the model behind it.

arlkit calls `run` once per episode with an AsyncOpenAI client pointed at its gateway and one toywiki row.
The agent searches the wiki until it answers and returns its reward (exact match). Every request it makes
is recorded token by token, so GRPO trains exactly what the model generated.
"""

import json
import re
import string

from arlkit.tasks.toywiki import ToyWikiTask

SEARCH = ToyWikiTask().search  # the agent's own tool: BM25 over the toywiki world
MAX_TURNS = 4


def normalise(text: str) -> str:
    text = "".join(c for c in text.lower() if c not in string.punctuation)
    return " ".join(text.split())


async def run(client, row: dict) -> float:
    # no `tools=`: the tiny base learnt <search> from demonstrations; a real model is sent its tool schemas
    messages = [{"role": "user", "content": row["question"]}]
    for _ in range(MAX_TURNS):
        reply = await client.chat.completions.create(model="policy", messages=messages)
        message = reply.choices[0].message
        messages.append(message.model_dump(exclude_none=True))
        if not message.tool_calls:
            answer = re.search(r"<answer>(.*?)</answer>", message.content or "", re.S)
            return float(answer is not None and normalise(answer.group(1)) == normalise(row["answer"]))
        for call in message.tool_calls:
            query = json.loads(call.function.arguments).get("query", "")
            result = SEARCH(query=query).text
            messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
    return 0.0
