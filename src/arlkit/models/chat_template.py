"""arlkit's ChatML chat template with tool support (Qwen2.5 style, compact).

It renders `tools=` (JSON schemas) into the system turn, assistant `tool_calls`, and groups consecutive `tool`
messages into one user turn of `<tool_response>` blocks, as Qwen2.5 does. It is prefix-preserving: rendering
a conversation and then appending messages only appends text, which is what lets the rollout engine insert
observation ids without re-tokenising what the model generated (METHODS.md §1).
"""

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
