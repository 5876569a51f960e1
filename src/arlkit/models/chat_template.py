"""arlkit's ChatML chat template with tool support (Qwen2.5 style, compact).

It renders `tools=` (JSON schemas) into the system turn, assistant `tool_calls`, and groups consecutive `tool`
messages into one user turn of `<tool_response>` blocks, as Qwen2.5 does. It is prefix-preserving: rendering
a conversation and then appending messages only appends text, which is what lets the rollout engine insert
observation ids without re-tokenising what the model generated (METHODS.md §1).
"""

from __future__ import annotations

from typing import Any

# All text is emitted through {{- '...' }} expressions, so Jinja's whitespace control only ever trims the
# template's own layout, never a newline of the rendered conversation.
CHAT_TEMPLATE = """
{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n' }}{%- endif %}
    {{- '# Tools\\n<tools>' }}
    {%- for t in tools %}{{- '\\n' + (t | tojson) }}{%- endfor %}
    {{- '\\n</tools>\\nCall: <tool_call>{"name": ..., "arguments": ...}</tool_call>. Answer: <answer>...</answer><|im_end|>\\n' }}
{%- elif messages[0].role == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- for m in messages %}
    {%- if m.role == 'system' and loop.first %}
    {%- elif m.role == 'tool' %}
        {%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}
        {{- '\\n<tool_response>\\n' + m.content + '\\n</tool_response>' }}
        {%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}
    {%- elif m.role == 'assistant' %}
        {{- '<|im_start|>assistant\\n' + (m.content if m.content else '') }}
        {%- for tc in m.tool_calls or [] %}
            {%- set f = tc.function if tc.function is defined else tc %}
            {{- '<tool_call>{"name": ' + (f.name | tojson) + ', "arguments": ' }}
            {{- (f.arguments if f.arguments is string else f.arguments | tojson) + '}</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}
""".strip()

# Special tokens of the tiny tokenizer. The ChatML turn tokens are "special" (skipped by
# decode(skip_special_tokens=True)); the tool and answer delimiters are single, non-special added tokens as in
# Qwen2.5, so every delimiter is one id and the role rule of METHODS.md §1 changes at a token boundary.
TURN_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
DELIMITER_TOKENS = (
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
    "<answer>",
    "</answer>",
    "<search>",
    "</search>",
    "<information>",
    "</information>",
    "<think>",
    "</think>",
)

# Qwen2.5-Instruct's chat template (its tokenizer_config.json, tool-calling part verbatim in structure): tools
# in the system turn inside <tools>, assistant tool_calls as <tool_call> JSON on their own lines, consecutive
# tool messages grouped into one user turn of <tool_response> blocks, a default system message. Used to test
# the real-model path (prefix preservation, observation glue) with a locally built tokenizer.
QWEN25_CHAT_TEMPLATE = """
{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
""".strip()
QWEN25_DELIMITER_TOKENS = ("<tool_call>", "</tool_call>")  # Qwen2.5's added tokens among arlkit's delimiters

_PROBE_TOOL = {
    "type": "function",
    "function": {
        "name": "probe_tool",
        "description": "probe tool description",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
    },
}
_PROBE = [
    {"role": "user", "content": "probe question"},
    {
        "role": "assistant",
        "content": 'x<tool_call>{"name": "probe_tool", "arguments": {"q": "a"}}</tool_call>',
    },
    {"role": "tool", "content": "probe observation"},
    {"role": "assistant", "content": "<answer>y</answer>"},
]


def supports_tool_episodes(tokenizer: Any) -> bool:
    """True if the tokenizer's chat template renders `tools=` and `tool` messages and is prefix-preserving
    on a tool episode (each rendering extends the previous one with the generation prompt)."""
    if not getattr(tokenizer, "chat_template", None):
        return False
    try:

        def render(k: int, gen: bool) -> str:
            return tokenizer.apply_chat_template(
                _PROBE[:k], tools=[_PROBE_TOOL], tokenize=False, add_generation_prompt=gen
            )

        full = render(len(_PROBE), False)
        if "probe tool description" not in full or "probe observation" not in full:  # schemas, tool turns
            return False
        return all(render(k + 1, False).startswith(render(k, True)) for k in (1, 3))
    except Exception:  # a template that raises on tools or roles cannot run tool episodes
        return False


def ensure_tool_template(tokenizer: Any) -> str:
    """Keep the tokenizer's own template when it supports tool episodes, else install arlkit's ChatML one.
    Returns "own" or "arlkit"."""
    if supports_tool_episodes(tokenizer):
        return "own"
    tokenizer.chat_template = CHAT_TEMPLATE
    return "arlkit"
