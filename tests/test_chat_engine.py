"""The chat engine: a cached conversation equals recomputing it, streaming in whole characters, stops."""

import pytest
import torch
from _chat_helpers import byte_ids, chat_tokenizer, random_gpt, scripted_gpt

from scratchllm.chat.engine import BASE_NOTE, ContextError, Engine, Sampling
from scratchllm.tokenizer.chat import ASSISTANT_END, render_prompt

GREEDY = Sampling(temperature=0.0, max_new_tokens=12)


@pytest.fixture(scope="module")
def tok():
    return chat_tokenizer()


@pytest.fixture(scope="module")
def engine(tok):
    return Engine(random_gpt(tok.vocab_size), tok)


def special(tok, name):
    return tok.special_tokens[name]


def recomputed(model, ids, n):
    """n greedy tokens after ids, every step from the whole sequence (no cache)."""
    out = model.generate(torch.tensor([ids]), n, temperature=0, use_cache=False)
    return out[0, len(ids):].tolist()


def test_a_cached_conversation_equals_recomputing_it_from_scratch(engine, tok):
    s = tok.special_tokens
    session = engine.session(system="Be brief.")
    conversation: list[int] = []
    for n, text in enumerate(["Hello there", "how are you doing today?", "And you? Good."]):
        before = len(session.context.ids)
        stream = session.ask(text, GREEDY)
        reply = stream.run()
        user = tok.encode(f"Be brief.\n\n{text}" if n == 0 else text)
        turn = [s["<|assistant_end|>"] if n else s["<|bos|>"], s["<|user_start|>"], *user, s["<|user_end|>"],
                s["<|assistant_start|>"]]
        conversation += turn
        assert stream.prompt == conversation
        # Only the new turn ran: everything before it came from the cache.
        assert stream.cached_tokens == before == len(conversation) - len(turn)
        expect = recomputed(engine.model, conversation, len(stream.ids) + 1)
        assert stream.ids == expect[:len(stream.ids)]
        if stream.finish_reason == "stop":
            assert expect[-1] in engine.end_ids
        else:
            assert stream.finish_reason == "length" and len(stream.ids) == GREEDY.max_new_tokens
        assert reply == tok.decode(stream.ids) and stream.ttft is not None and stream.ttft > 0
        conversation += stream.ids
    assert len(conversation) > 30


def test_the_session_renders_as_the_chat_template(engine, tok):
    session = engine.session(system="Be brief.")
    session.ask("Hello there", Sampling(max_new_tokens=0)).run()
    session.turns[-1][1][:] = tok.encode("I am fine")  # a reply whose tokens are the template's own
    stream = session.ask("And you?", Sampling(max_new_tokens=0))
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"},
                {"role": "assistant", "content": "I am fine"}, {"role": "user", "content": "And you?"}]
    assert stream.prompt == render_prompt(messages, tok) == engine.prompt_ids(messages)


SCRIPT_TEXT = "héllo wörld ✓ ok"


def scripted_engine(tok, script, block_size=64):
    return Engine(scripted_gpt(tok.vocab_size, script, block_size), tok)


def test_streaming_yields_whole_characters_only(tok):
    text = byte_ids(tok, SCRIPT_TEXT)
    assert len(text) > len(SCRIPT_TEXT)  # é, ö and ✓ span two or three tokens each
    prompt = tok.encode("Hi")
    engine = scripted_engine(tok, [0] * (len(prompt) - 1) + text + [special(tok, ASSISTANT_END)] * 10)
    stream = engine.complete(prompt, Sampling(temperature=0, max_new_tokens=50))
    pieces = list(stream)
    assert pieces == list(SCRIPT_TEXT)  # one piece a character, each as soon as its last byte came
    assert stream.ids == text and stream.finish_reason == "stop"
    assert stream.end_token == special(tok, ASSISTANT_END)


def test_a_character_cut_off_by_the_length_limit_ends_as_a_replacement_mark(tok):
    text = byte_ids(tok, "a✓")
    engine = scripted_engine(tok, text)
    pieces = list(engine.complete([text[0]], Sampling(temperature=0, max_new_tokens=3)))
    assert pieces == ["a", "\ufffd"]  # two of ✓'s three bytes: held back, then one mark at the end


@pytest.mark.parametrize("settings, text, reason", [
    (dict(), SCRIPT_TEXT, "stop"),  # <|assistant_end|>
    (dict(max_new_tokens=5), "héll", "length"),  # é is two tokens
    (dict(stop=("wör",)), "héllo ", "stop"),
    (dict(stop=("xyz", "d ✓", "o ")), "héll", "stop"),  # the earliest of several
    (dict(stop=("lo wx",)), SCRIPT_TEXT, "stop"),  # a near miss is shown after all
])
def test_generation_stops_where_it_should(tok, settings, text, reason):
    ids = byte_ids(tok, SCRIPT_TEXT) + [special(tok, ASSISTANT_END)] + byte_ids(tok, "more text")
    engine = scripted_engine(tok, ids)
    stream = engine.complete([ids[0]], Sampling(temperature=0, **{"max_new_tokens": 40, **settings}))
    pieces = list(stream)
    assert "".join(pieces) == stream.text == text and stream.finish_reason == reason
    assert special(tok, ASSISTANT_END) not in stream.ids


@pytest.mark.parametrize("end", ["<|bos|>", "<|endoftext|>"])
def test_other_end_tokens_stop_too(tok, end):
    ids = byte_ids(tok, "ok") + [special(tok, end)] + byte_ids(tok, "more")
    stream = scripted_engine(tok, ids).complete([ids[0]], Sampling(temperature=0, max_new_tokens=20))
    assert stream.run() == "ok" and stream.finish_reason == "stop" and stream.end_token == special(tok, end)


def test_a_full_context_ends_the_reply_and_a_long_prompt_is_refused(tok):
    engine = scripted_engine(tok, byte_ids(tok, "abcdefghijklmnopqrstuvwxyz" * 3), block_size=16)
    stream = engine.complete(byte_ids(tok, "abcd"), Sampling(temperature=0, max_new_tokens=100))
    # The scripted model writes script[3:] after 4 tokens; 13 more fill the cache, the last one sampled.
    assert stream.run() == "defghijklmnop" and stream.finish_reason == "length" and stream.end_token is None
    with pytest.raises(ContextError, match="context holds 16"):
        engine.complete(byte_ids(tok, "a" * 17), GREEDY)


def test_a_long_conversation_drops_its_oldest_turns(tok):
    model = random_gpt(tok.vocab_size, block_size=48)
    engine = Engine(model, tok)
    session = engine.session()
    params = Sampling(temperature=0, max_new_tokens=6)
    for text in ["Hello there", "how are you doing", "I am fine thanks", "very good indeed"]:
        stream = session.ask(text, params)
        stream.run()
        assert len(stream.prompt) < 48
    assert [t for t, _ in session.turns][0] != "Hello there"  # the first turn went
    # The rebuilt context answers as a fresh session holding the same turns does.
    fresh = engine.session()
    for text, reply in session.turns[:-1]:
        fresh.turns.append((text, list(reply)))
    again = fresh.ask(session.turns[-1][0], params)
    assert again.run() == stream.text and again.prompt == stream.prompt
    with pytest.raises(ContextError, match="send a shorter one"):
        session.ask("very good " * 20, params)
    assert session.turns[-1][0] == "very good indeed"  # the refused message left no trace


def test_seeded_sampling_is_reproducible_and_independent_of_other_requests(engine, tok):
    prompt = tok.encode("Hello there")

    def params(seed):
        return Sampling(temperature=1.0, top_k=50, top_p=0.95, max_new_tokens=20, seed=seed)

    alone = engine.complete(prompt, params(7)).run()
    assert engine.complete(prompt, params(7)).run() == alone
    assert engine.complete(prompt, params(8)).run() != alone
    # Interleaved token by token with another request, a seeded stream writes the same text.
    a, b = iter(engine.complete(prompt, params(7))), iter(engine.complete(prompt, params(8)))
    texts = ["", ""]
    for _ in range(40):
        for i, it in enumerate((a, b)):
            texts[i] += next(it, "")
    assert texts[0] == alone


def test_a_cancelled_stream_stops_and_keeps_what_it_wrote(engine, tok):
    calls = []
    stream = engine.complete(tok.encode("Hello"), GREEDY, cancel=lambda: len(calls) > 0)
    first = next(iter(stream))
    calls.append(1)
    assert stream.text == first and stream.finish_reason is None
    stream = engine.complete(tok.encode("Hello"), GREEDY, cancel=lambda: True)
    assert stream.run() == "" and stream.finish_reason == "cancelled"


def test_a_base_run_is_plain_completion(tok):
    base = chat_tokenizer(chat=False)
    model = random_gpt(base.vocab_size)
    engine = Engine(model, base)
    assert not engine.is_chat and engine.note == BASE_NOTE and "plain completion" in engine.note
    session = engine.session()
    stream = session.ask("Hello there", GREEDY)
    stream.run()
    assert stream.prompt == base.encode("Hello there")
    expect = model.generate(torch.tensor([stream.prompt]), 12, temperature=0, eot=base.eot_id)[0].tolist()
    assert stream.prompt + stream.ids == [i for i in expect if i != base.eot_id]
    second = session.ask(" And you?", GREEDY)
    assert second.prompt == stream.prompt + stream.ids + base.encode(" And you?")


@pytest.mark.parametrize("bad", [dict(temperature=-1), dict(temperature=float("nan")), dict(top_k=0),
                                 dict(top_p=0), dict(top_p=1.5), dict(max_new_tokens=-1), dict(seed=-1),
                                 dict(stop=("",))])
def test_settings_out_of_range_are_refused(bad):
    with pytest.raises(ValueError):
        Sampling(**bad).check()
