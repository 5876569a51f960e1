"""Agents for tests/test_gateway.py, importable as `gateway_agents:<name>` (rollout.agent)."""


async def summarising(client, row: dict) -> float:
    """Two turns, then a request whose history is a summary: every episode has two segments."""
    messages = [{"role": "user", "content": row["question"]}]
    for _ in range(2):
        reply = await client.chat.completions.create(model="m", messages=messages)
        messages += [
            reply.choices[0].message.model_dump(exclude_none=True),
            {"role": "user", "content": "more"},
        ]
    summary = [{"role": "user", "content": "Summary: " + row["question"]}]
    reply = await client.chat.completions.create(model="m", messages=summary)
    return float(len(reply.choices[0].message.content or "") % 2)  # varies within a group
