"""Chat templates render byte-for-byte (and encode id-for-id) like transformers' apply_chat_template."""
from __future__ import annotations

import pytest

from helpers_tokenizers import MISTRAL_ALTERNATE_MSG, STYLES, write_style_folder
from lmstudio_lite.checkpoints.chat_template import FALLBACK_TEMPLATE, ChatTemplateError, render
from lmstudio_lite.checkpoints.tokenizer import Tokenizer

import transformers  # noqa: E402
import jinja2  # noqa: E402

from shared_data import STORIES  # noqa: E402

CONVERSATIONS = {
    "system": [
        {"role": "system", "content": "You are terse. Answer in one line."},
        {"role": "user", "content": "Hi! 你好 🙂"},
        {"role": "assistant", "content": "  Hello there.\n"},
        {"role": "user", "content": "What is 2+2?\n\n"},
    ],
    "no_system": [
        {"role": "user", "content": "Tell me a story about a cat <&> café."},
        {"role": "assistant", "content": "Once upon a time..."},
        {"role": "user", "content": "Shorter, please."},
    ],
    "single": [{"role": "user", "content": "hello"}],
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat_styles")
    return {style: write_style_folder(root / style, style) for style in STYLES}


@pytest.fixture(scope="module")
def reference(folders):
    """transformers' tokenizer per style, loaded once."""
    cache = {}

    def get(style):
        if style not in cache:
            cache[style] = transformers.AutoTokenizer.from_pretrained(str(folders[style]))
        return cache[style]

    return get


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
@pytest.mark.parametrize("style", sorted(STYLES))
def test_render_and_encode_match_transformers(folders, reference, style, conversation, add_generation_prompt):
    ours, ref = Tokenizer.from_folder(folders[style]), reference(style)
    messages = CONVERSATIONS[conversation]
    assert ours.has_chat_template

    text = ours.render_chat(messages, add_generation_prompt=add_generation_prompt)
    expected = ref.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)
    assert text == expected

    ids = ours.encode_chat(messages, add_generation_prompt=add_generation_prompt)
    expected_ids = ref.apply_chat_template(
        messages, add_generation_prompt=add_generation_prompt, tokenize=True, return_dict=False
    )
    assert ids == expected_ids


def test_styles_render_what_they_should(folders):
    # Guards against the parity test passing on empty or trivial output.
    chatml = Tokenizer.from_folder(folders["chatml"])
    text = chatml.render_chat(CONVERSATIONS["no_system"])
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    assert text.endswith("<|im_start|>assistant\n")
    assert "You are a helpful" not in chatml.render_chat(CONVERSATIONS["system"])

    llama3 = Tokenizer.from_folder(folders["llama3"])
    bos = llama3.bos_id
    assert llama3.render_chat(CONVERSATIONS["single"]) == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhello<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    # The template writes BOS, so encode_chat must not add a second one; plain encode adds it.
    assert llama3.encode_chat(CONVERSATIONS["single"]).count(bos) == 1
    assert llama3.encode("hello")[0] == bos

    mistral = Tokenizer.from_folder(folders["mistral"])
    assert mistral.render_chat(CONVERSATIONS["system"], add_generation_prompt=False) == (
        "<s> [INST] You are terse. Answer in one line.\n\nHi! 你好 🙂 [/INST]   Hello there.\n</s>"
        " [INST] What is 2+2?\n\n [/INST]"
    )


def test_list_of_templates_picks_default(folders):
    assert Tokenizer.from_folder(folders["chatml"]).chat_template == STYLES["chatml"]["config"]["chat_template"][0][
        "template"
    ]


def test_raise_exception_gives_our_error_with_the_template_message(folders, reference):
    ours = Tokenizer.from_folder(folders["mistral"])
    bad = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(ChatTemplateError) as err:
        ours.render_chat(bad)
    assert err.value.message == MISTRAL_ALTERNATE_MSG
    assert str(err.value) == MISTRAL_ALTERNATE_MSG
    with pytest.raises(jinja2.TemplateError, match="roles must alternate"):
        reference("mistral").apply_chat_template(bad, tokenize=False)


def test_fallback_template_text():
    messages = CONVERSATIONS["system"][:3] + [{"role": "user", "content": "Bye"}]
    text = render(FALLBACK_TEMPLATE, messages, add_generation_prompt=True, bos_token="<s>", eos_token="</s>")
    assert text == (
        "<s>### System:\nYou are terse. Answer in one line.\n\n"
        "### User:\nHi! 你好 🙂\n\n"
        "### Assistant:\n  Hello there.\n</s>\n\n"
        "### User:\nBye\n\n"
        "### Assistant:\n"
    )
    # Without special tokens nothing is invented, and no generation prompt when not asked.
    assert render(FALLBACK_TEMPLATE, CONVERSATIONS["single"]) == "### User:\nhello\n\n"


def test_model_without_template_uses_fallback_like_transformers_would():
    ours = Tokenizer.from_folder(STORIES)
    ref = transformers.AutoTokenizer.from_pretrained(STORIES)
    assert not ours.has_chat_template and ours.chat_template is None
    messages = CONVERSATIONS["no_system"]
    expected = ref.apply_chat_template(messages, chat_template=FALLBACK_TEMPLATE, tokenize=False,
                                       add_generation_prompt=True)
    assert ours.render_chat(messages) == expected
    assert expected.startswith("<s>### User:\n")
    assert ours.encode_chat(messages) == ref.apply_chat_template(
        messages, chat_template=FALLBACK_TEMPLATE, add_generation_prompt=True, return_dict=False
    )


@pytest.mark.parametrize(
    "messages, problem",
    [
        ([], "non-empty list"),
        ("hello", "non-empty list"),
        (["hello"], "not a dict"),
        ([{"role": "robot", "content": "x"}], "role 'robot'"),
        ([{"role": "user", "content": None}], "must be a string"),
        ([{"role": "user", "content": [{"type": "text", "text": "x"}]}], "must be a string"),
        ([{"content": "no role"}], "role None"),
    ],
)
def test_bad_messages_are_refused_clearly(messages, problem):
    with pytest.raises(ChatTemplateError, match=problem):
        render(FALLBACK_TEMPLATE, messages)


def test_tool_role_and_none_valued_keys_are_accepted():
    messages = [{"role": "user", "content": "x"}, {"role": "tool", "content": "42", "name": None}]
    text = render("{% for m in messages %}{{ m | tojson }};{% endfor %}", messages)
    assert text == '{"role": "user", "content": "x"};{"role": "tool", "content": "42"};'


@pytest.mark.parametrize(
    "template",
    [
        "{% for m in messages %}{{ m.content }",  # syntax error
        "{{ ''.__class__.__mro__ }}",  # sandbox: unsafe attribute
        "{% set ns = namespace(_secret=1) %}{{ ns }}",  # underscore names refused
        "{{ messages[0].nothing.deeper }}",  # undefined
    ],
)
def test_broken_or_unsafe_templates_raise_chat_template_error(template):
    with pytest.raises(ChatTemplateError):
        render(template, CONVERSATIONS["single"])
