"""Chat-template rendering with Hugging Face semantics, for every caller (UI, API, CLI).

A chat template is Jinja code shipped with a model (tokenizer_config.json "chat_template" or
chat_template.jinja). Templates from the Hub are untrusted, so they run in jinja2's
``ImmutableSandboxedEnvironment``. The environment mirrors transformers' ``apply_chat_template``
(``chat_template_utils._compile_jinja_template`` / ``render_jinja_template``) so the text is
byte-identical: ``trim_blocks`` + ``lstrip_blocks``, the ``loopcontrols`` extension, a ``tojson``
filter that does not HTML-escape and keeps non-ASCII, and the globals ``raise_exception``,
``strftime_now``, a restricted ``dict`` and an underscore-refusing ``namespace``. Like transformers
we pass ``tools=None`` and ``documents=None`` (templates test ``tools is none``) and drop message
keys whose value is None.

``FALLBACK_TEMPLATE`` is used for models without a template (base models, models trained here).
It renders, with ``bos_token`` first when the model has one::

    <bos>### System:
    {system}

    ### User:
    {user}

    ### Assistant:
    {assistant}<eos>

    ### Assistant:
    <- the generation prompt, when add_generation_prompt is set

Tool messages render as ``### Tool:`` blocks.
"""
from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..errors import LiteError
from ..messages import Message

ROLES = ("system", "user", "assistant", "tool")

FALLBACK_TEMPLATE = (
    "{% if bos_token %}{{ bos_token }}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '### Assistant:\\n' + message['content'] }}{% if eos_token %}{{ eos_token }}{% endif %}{{ '\\n\\n' }}"
    "{% else %}"
    "{{ '### ' + message['role'] | capitalize + ':\\n' + message['content'] + '\\n\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Assistant:\\n' }}{% endif %}"
)

# ChatML (as Qwen2 and SmolLM use it, without a default system prompt): the
# template of models trained from scratch with ``--chat-template chatml``.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
CHATML_SPECIAL_TOKENS = ("<|im_start|>", "<|im_end|>")
PRESETS = {"fallback": FALLBACK_TEMPLATE, "chatml": CHATML_TEMPLATE}


class ChatTemplateError(LiteError, ValueError):
    """Messages a template cannot render, a broken template, or the template's own raise_exception."""

    def __init__(self, message: str):
        self.message = message
        super().__init__(message)


def _raise_exception(message):
    # Templates call this to refuse a conversation (e.g. roles that do not alternate);
    # the message is the template's own words, passed on unchanged.
    raise ChatTemplateError(str(message))


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # Jinja's built-in tojson HTML-escapes '<', '>', '&', "'" and forces ASCII; templates
    # on the Hub are written against transformers' plain json.dumps, so we use that.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


class _TemplateDict:
    # The `dict` global: builds plain dicts without exposing the dict type itself to the sandbox.
    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    # Refuses underscore attributes so a template cannot reach CPython internals through a namespace.
    def __init__(*args, **kwargs):
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"chat templates cannot set {name!r} on a namespace")


def compile_template(template: str) -> jinja2.Template:
    """Compile once; callers that render often (the Tokenizer) keep the result."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise ChatTemplateError(Message("ckpt.template_parse", line=e.lineno, error=e.message)) from e


def validate_messages(messages: Any) -> list[dict]:
    """Check the conversation shape and return copies without None-valued keys (as transformers does)."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ChatTemplateError(Message("ckpt.template_messages"))
    clean = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ChatTemplateError(Message("ckpt.template_not_dict", i=i, type=type(message).__name__))
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise ChatTemplateError(Message("ckpt.template_role", i=i, role=repr(role), roles=", ".join(ROLES)))
        if not isinstance(content, str):
            raise ChatTemplateError(Message("ckpt.template_content", i=i, role=role, type=type(content).__name__))
        clean.append({key: value for key, value in message.items() if value is not None})
    return clean


def render(
    template: str | jinja2.Template,
    messages: list[dict],
    add_generation_prompt: bool = False,
    **extra: Any,
) -> str:
    """Render `messages` exactly as transformers' apply_chat_template(..., tokenize=False).

    `extra` carries the special tokens (bos_token, eos_token, ...) and any template variables;
    it may override tools/documents, which default to None like in transformers.
    """
    compiled = compile_template(template) if isinstance(template, str) else template
    variables = {"tools": None, "documents": None, **extra}
    try:
        return compiled.render(
            messages=validate_messages(messages), add_generation_prompt=add_generation_prompt, **variables
        )
    except ChatTemplateError:
        raise
    except jinja2.TemplateError as e:
        # Undefined attributes, sandbox refusals: the template cannot render this conversation.
        raise ChatTemplateError(Message("ckpt.template_failed", error=str(e))) from e
