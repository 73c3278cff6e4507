"""Builders for small tokenizer folders in real chat styles (ChatML, Llama-3, Mistral), for tests.

The tokenizer.json is a byte-level BPE trained with the tokenizers library itself (not with our
train_bpe_tokenizer) so fixtures do not depend on the code under test.
"""
from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

SENTENCES = [
    "Hello world! This is a tiny corpus for a tiny tokenizer.",
    "You are a helpful assistant. What is the capital of France? Paris is the capital.",
    "def add(a, b):\n    return a + b\n",
    "你好，世界！今天天气很好。 café naïve 🙂👍🏽",
    "The quick brown fox jumps over the lazy dog. Once upon a time there was a cat.",
]

# Qwen2's template: a default system prompt when the conversation has none.
CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Meta-Llama-3-Instruct's template: bos_token in the text, contents trimmed.
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

MISTRAL_ALTERNATE_MSG = (
    "After the optional system message, conversation roles must alternate user/assistant/user/assistant/..."
)
# Mistral-7B-Instruct-v0.2 style: optional system message folded into the first [INST].
MISTRAL = """{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('""" + MISTRAL_ALTERNATE_MSG + """') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.first and system_message is defined %}
            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}
        {%- else %}
            {{- ' [INST] ' + message['content'] + ' [/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + message['content'] + eos_token}}
    {%- endif %}
{%- endfor %}
"""

# Exercises the environment itself: whitespace control, loop controls, namespace, dict, tojson options,
# strftime_now and the tools=None variable.
FEATURES = """{%- set ns = namespace(count=0) -%}
{% if tools is none %}[no tools]{% endif %}
{% for message in messages %}
  {% if message.role == 'system' %}{% continue %}{% endif %}
  {% set ns.count = ns.count + 1 %}
    <{{ message.role }} n={{ ns.count }}>{{ message.content | tojson }}</{{ message.role }}>
  {% if ns.count >= 2 %}{% break %}{% endif %}
{% endfor %}
{{ messages | tojson(indent=2) }}
{{ {"b": "é<>&'", "a": [1, 2]} | tojson(sort_keys=True, separators=(",", ":")) }} {{ dict(x=1) | tojson }}
{% if strftime_now("%Y") | length == 4 %}year ok{% endif %}
{% if add_generation_prompt %}<gen {{ eos_token }}>{% endif %}
"""

STYLES = {
    "chatml": dict(
        specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        config={
            "bos_token": None,
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
            # Several templates as a list: "default" is the one used without tools.
            "chat_template": [
                {"name": "default", "template": CHATML},
                {"name": "tool_use", "template": "{{ 'TOOLS' }}"},
            ],
            # A token only the config knows: transformers adds it on load, so must we.
            "added_tokens_decoder": {
                "9999": {"content": "<|extra_0|>", "lstrip": False, "normalized": False,
                         "rstrip": False, "single_word": False, "special": True},
            },
        },
        generation={"eos_token_id": [2, 0]},
    ),
    "llama3": dict(
        specials=["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        config={
            "bos_token": "<|begin_of_text|>",
            # Older configs store special tokens as serialized AddedTokens.
            "eos_token": {"__type": "AddedToken", "content": "<|eot_id|>", "lstrip": False,
                          "normalized": False, "rstrip": False, "single_word": False, "special": True},
            "chat_template": LLAMA3,
        },
        generation={"bos_token_id": 0, "eos_token_id": [1, 4]},
        post_bos="<|begin_of_text|>",
    ),
    "mistral": dict(
        specials=["<unk>", "<s>", "</s>"],
        config={"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True,
                "add_eos_token": False, "chat_template": MISTRAL},
        generation={"eos_token_id": 2},
        post_bos="<s>",
    ),
    "features": dict(
        specials=["<|endoftext|>"],
        config={"eos_token": "<|endoftext|>", "chat_template": FEATURES},
        generation=None,
    ),
}


def build_byte_bpe(specials: list[str], vocab_size: int = 400, post_bos: str | None = None) -> Tokenizer:
    """A GPT-2-style byte-level BPE trained on SENTENCES; `post_bos` makes the post-processor prepend it."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(SENTENCES * 3, trainer=trainer)
    if post_bos is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{post_bos} $A", pair=f"{post_bos} $A {post_bos} $B",
            special_tokens=[(post_bos, tok.token_to_id(post_bos))])
    return tok


def write_style_folder(folder: Path, style: str) -> Path:
    """A model folder's tokenizer files in one of STYLES."""
    spec = STYLES[style]
    folder.mkdir(parents=True, exist_ok=True)
    build_byte_bpe(spec["specials"], post_bos=spec.get("post_bos")).save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False, **spec["config"]}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    if spec["generation"] is not None:
        (folder / "generation_config.json").write_text(json.dumps(spec["generation"]), encoding="utf-8")
    return folder
