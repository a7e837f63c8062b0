"""Qwen2.5-VL's tokenizer: its special token ids and its chat template (default system prompt included)."""

from megatron_vlm.models.family import ChatFormat, SpecialTokens

TOKENS = SpecialTokens(pad=151643, im_start=151644, im_end=151645, vision_start=151652, vision_end=151653,
                       image_pad=151655, video_pad=151656)

CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# The last added token of Qwen2.5-VL's tokenizer is <|file_sep|> (151664): Qwen3's <tool_response>,
# </tool_response>, <think>, </think> (151665-151668) do not exist in it. 131,072: its model_max_length.
CHAT = ChatFormat(tokens=TOKENS, template=CHAT_TEMPLATE, last_token_id=151664, model_max_length=131072)
