"""Conversations as tokens: the turn tokens, rendering with its loss mask, and transformers' chat template."""

import pytest

from scratchllm.tokenizer import train_bpe
from scratchllm.tokenizer.chat import (
    CHAT_TEMPLATE,
    CHAT_TOKENS,
    ConversationError,
    check_messages,
    has_chat_tokens,
    render,
    render_prompt,
    with_chat_tokens,
)
from scratchllm.tokenizer.encoding import EOT, Tokenizer

TEXT = ["Hello there, how are you doing today?", "I am fine, thanks. And you?", "Good <|user_end|> too."] * 5


@pytest.fixture(scope="module")
def tok():
    return train_bpe(TEXT, 300, special_tokens=(EOT, *CHAT_TOKENS))


def ids_of(tok):
    return {t: tok.special_tokens[t] for t in CHAT_TOKENS}


def test_a_conversation_renders_with_its_mask(tok):
    s = ids_of(tok)
    conversation = [{"role": "user", "content": "Hello there"},
                    {"role": "assistant", "content": "I am fine"},
                    {"role": "user", "content": "And you?"}, {"role": "assistant", "content": "Good."}]
    ids, mask = render(conversation, tok)
    u1, a1, u2, a2 = (tok.encode(m["content"]) for m in conversation)
    assert ids == [s["<|bos|>"], s["<|user_start|>"], *u1, s["<|user_end|>"], s["<|assistant_start|>"], *a1,
                   s["<|assistant_end|>"], s["<|user_start|>"], *u2, s["<|user_end|>"],
                   s["<|assistant_start|>"], *a2, s["<|assistant_end|>"]]
    # The loss counts the assistant's words and its end token, nothing the user wrote.
    learned = [i for i, m in zip(ids, mask, strict=True) if m]
    assert learned == [*a1, s["<|assistant_end|>"], *a2, s["<|assistant_end|>"]]
    prompt = render_prompt(conversation[:3], tok)
    assert prompt == ids[: len(prompt)] and prompt[-1] == s["<|assistant_start|>"]
    assert ids[len(prompt):] == [*a2, s["<|assistant_end|>"]]


def test_a_system_message_opens_the_first_user_message(tok):
    with_system = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"},
                   {"role": "assistant", "content": "Hi"}]
    folded = [{"role": "user", "content": "Be brief.\n\nHello"}, {"role": "assistant", "content": "Hi"}]
    assert render(with_system, tok) == render(folded, tok)


def test_special_tokens_typed_in_a_message_stay_text(tok):
    ids, _ = render([{"role": "user", "content": "say <|assistant_end|> now"},
                     {"role": "assistant", "content": "<|user_end|>"}], tok)
    assert ids.count(tok.special_tokens["<|assistant_end|>"]) == 1  # only the real end of the turn
    assert ids.count(tok.special_tokens["<|user_end|>"]) == 1


@pytest.mark.parametrize("messages, reason", [
    ([], "no messages"),
    ([{"role": "user", "content": "hi"}], "no assistant turn"),
    ([{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}], "unknown role"),
    ([{"role": "user", "content": "  "}, {"role": "assistant", "content": "x"}], "empty content"),
    ([{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}], "empty content"),
    ([{"role": "assistant", "content": "x"}, {"role": "user", "content": "hi"}], "roles out of order"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "roles out of order"),
    ([{"role": "system", "content": "s"}], "no user message"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
      {"role": "system", "content": "c"}], "roles out of order"),
    ("hello", "no messages"),
])
def test_what_is_no_conversation_is_refused_with_its_reason(messages, reason):
    with pytest.raises(ConversationError, match=reason):
        check_messages(messages)


def test_chat_tokens_come_after_gpt2s_ids_and_leave_text_alone():
    gpt2 = Tokenizer.pretrained("gpt2")
    chat = with_chat_tokens(gpt2)
    assert [chat.special_tokens[t] for t in CHAT_TOKENS] == list(range(50257, 50262))
    assert chat.vocab_size == 50262 and chat.eot_id == 50256
    assert has_chat_tokens(chat) and not has_chat_tokens(gpt2)
    text = "Hello world! <|user_start|> stays text"
    assert chat.encode(text) == gpt2.encode(text)
    assert with_chat_tokens(chat) is chat and chat.sha256() != gpt2.sha256()


def test_transformers_chat_template_gives_our_ids(tok):
    pytest.importorskip("transformers")
    from scratchllm.tokenizer.hf_fast import fast_tokenizer

    fast = fast_tokenizer(tok)
    fast.chat_template = CHAT_TEMPLATE
    conversation = [{"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Hello there, how are"},
                    {"role": "assistant", "content": "I am fine, thanks."},
                    {"role": "user", "content": "And you?"}]

    def hf(messages, **kw):
        out = fast.apply_chat_template(messages, tokenize=True, **kw)
        return list(out["input_ids"] if hasattr(out, "keys") else out)

    assert hf(conversation, add_generation_prompt=True) == render_prompt(conversation, tok)
    whole = [*conversation, {"role": "assistant", "content": "Good too."}]
    assert hf(whole) == render(whole, tok)[0]
