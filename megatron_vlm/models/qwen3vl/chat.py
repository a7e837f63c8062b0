"""Qwen3-VL's tokenizer: its special token ids (Qwen3's vocabulary, all 151,669 ids) and the Instruct models'
chat template (no default system prompt; tools, tool calls and tool responses as Qwen3's)."""

from megatron_vlm.models.family import ChatFormat, SpecialTokens

TOKENS = SpecialTokens(pad=151643, im_start=151644, im_end=151645, vision_start=151652, vision_end=151653,
                       image_pad=151655, video_pad=151656)

_SYSTEM_TEXT = ("{%- if messages[0].content is string %}{{- messages[0].content }}{%- else %}"
                "{%- for content in messages[0].content %}{%- if 'text' in content %}{{- content.text }}{%- endif %}"
                "{%- endfor %}{%- endif %}")
_MEDIA = ("{%- if content.type == 'image' or 'image' in content or 'image_url' in content %}"
          "{%- set image_count.value = image_count.value + 1 %}"
          "{%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}"
          "<|vision_start|><|image_pad|><|vision_end|>"
          "{%- elif content.type == 'video' or 'video' in content %}"
          "{%- set video_count.value = video_count.value + 1 %}"
          "{%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}"
          "<|vision_start|><|video_pad|><|vision_end|>"
          "{%- elif 'text' in content %}{{- content.text }}{%- endif %}")

CHAT_TEMPLATE = (
    "{%- if tools %}{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0].role == 'system' %}" + _SYSTEM_TEXT + "{{- '\\n\\n' }}{%- endif %}"
    "{{- \"# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided "
    "with function signatures within <tools></tools> XML tags:\\n<tools>\" }}"
    "{%- for tool in tools %}{{- \"\\n\" }}{{- tool | tojson }}{%- endfor %}"
    "{{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": "
    "<args-json-object>}\\n</tool_call><|im_end|>\\n\" }}"
    "{%- else %}{%- if messages[0].role == 'system' %}{{- '<|im_start|>system\\n' }}" + _SYSTEM_TEXT +
    "{{- '<|im_end|>\\n' }}{%- endif %}{%- endif %}"
    "{%- set image_count = namespace(value=0) %}{%- set video_count = namespace(value=0) %}"
    "{%- for message in messages %}"
    "{%- if message.role == \"user\" %}{{- '<|im_start|>' + message.role + '\\n' }}"
    "{%- if message.content is string %}{{- message.content }}{%- else %}"
    "{%- for content in message.content %}" + _MEDIA + "{%- endfor %}{%- endif %}{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == \"assistant\" %}{{- '<|im_start|>' + message.role + '\\n' }}"
    "{%- if message.content is string %}{{- message.content }}{%- else %}"
    "{%- for content_item in message.content %}{%- if 'text' in content_item %}{{- content_item.text }}"
    "{%- endif %}{%- endfor %}{%- endif %}"
    "{%- if message.tool_calls %}{%- for tool_call in message.tool_calls %}"
    "{%- if (loop.first and message.content) or (not loop.first) %}{{- '\\n' }}{%- endif %}"
    "{%- if tool_call.function %}{%- set tool_call = tool_call.function %}{%- endif %}"
    "{{- '<tool_call>\\n{\"name\": \"' }}{{- tool_call.name }}{{- '\", \"arguments\": ' }}"
    "{%- if tool_call.arguments is string %}{{- tool_call.arguments }}{%- else %}{{- tool_call.arguments | tojson }}"
    "{%- endif %}{{- '}\\n</tool_call>' }}{%- endfor %}{%- endif %}{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == \"tool\" %}"
    "{%- if loop.first or (messages[loop.index0 - 1].role != \"tool\") %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' }}{%- if message.content is string %}{{- message.content }}{%- else %}"
    "{%- for content in message.content %}" + _MEDIA + "{%- endfor %}{%- endif %}{{- '\\n</tool_response>' }}"
    "{%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Qwen3-VL's tokenizer keeps every added token of Qwen3's (the last is </think>, 151668); 262,144: its
# model_max_length (the native window).
CHAT = ChatFormat(tokens=TOKENS, template=CHAT_TEMPLATE, last_token_id=151668, model_max_length=262144)
