"""Conversation sources: the built-in Chit-Chat set, JSON lines, parquet, the hub; bad rows counted and
skipped; a held-out split by whole source conversations."""

import json
import logging
import zipfile

import pytest
from _sft_helpers import chat_bpe, chitchat_jsonl

from scratchllm.chat.data import (
    CHITCHAT_SHA256,
    chitchat_turns,
    chitchat_wheel,
    iter_conversations,
    load_conversations,
)
from scratchllm.tokenizer.chat import render
from scratchllm.util.errors import UserError
from scratchllm.util.files import sha256_file


@pytest.fixture(scope="module")
def tok():
    return chat_bpe()


GOOD = [{"role": "user", "content": "Hello there"}, {"role": "assistant", "content": "Good morrow, sir."}]
BAD = {  # reason -> messages
    "no assistant turn": [{"role": "user", "content": "Hello"}],
    "unknown role": [{"role": "robot", "content": "beep"}, {"role": "assistant", "content": "x"}],
    "empty content": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "x"}],
    "roles out of order": [{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}],
    "longer than the context": [{"role": "user", "content": "Hello there " * 80},
                                {"role": "assistant", "content": "ok"}],
}


def test_chitchat_turns_alternate_senders_from_the_wheel_itself():
    wheel = chitchat_wheel()
    assert sha256_file(wheel) == CHITCHAT_SHA256
    with zipfile.ZipFile(wheel) as z:
        data = json.loads(z.read("chitchat_dataset/dataset.json"))
    assert len(data) == 7168
    key = sorted(data)[0]
    turns = data[key]["messages"]
    messages = chitchat_turns(data[key])
    first = turns[0][0]["sender"]
    # Read the raw turns independently: one message per turn, the first sender's turns are the user's.
    roles = [("user" if t[0]["sender"] == first else "assistant") for t in turns]
    assert [m["role"] for m in messages] == roles
    assert messages[1]["content"] == "\n".join(m["text"].strip() for m in turns[1])
    # The source cuts the conversation into windows of its turns, in order, each opening with the user.
    windows = [m for k, m in iter_conversations("chitchat") if k == key]
    assert [m for w in windows for m in w] == messages[: sum(len(w) for w in windows)]
    assert all(w[0]["role"] == "user" for w in windows)


def test_bad_rows_are_counted_by_reason_and_skipped(tmp_path, tok, caplog):
    rows = [{"messages": GOOD}] * 3 + [{"messages": m} for m in BAD.values()] + [{"messages": GOOD[:1]}]
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="scratchllm"):
        convs = load_conversations(f"jsonl:{path}", tok, max_tokens=129, val_conversations=1, seed=0)
    assert len(convs.train) == 2 and len(convs.val) == 1
    assert convs.train[0] == render(GOOD, tok) and convs.val_messages == [GOOD]
    assert convs.skipped == {**{r: 1 for r in BAD}, "no assistant turn": 2, "not a JSON object": 1}
    lines = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(lines) == 1 and "skipped 7 conversations" in lines[0] and "2 no assistant turn" in lines[0]


def test_a_source_without_a_usable_conversation_is_refused_in_one_line(tmp_path, tok, run_cli):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(json.dumps({"messages": m}) for m in BAD.values()) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match="no usable conversation"):
        load_conversations(f"jsonl:{path}", tok, 129, 1)
    with pytest.raises(UserError, match="no files match"):
        load_conversations(f"jsonl:{tmp_path}/none*.jsonl", tok, 129, 1)
    with pytest.raises(UserError, match="unknown conversation source"):
        load_conversations("shakespeare", tok, 129, 1)
    with pytest.raises(UserError, match="cannot reach the Hugging Face hub"):  # HF_HUB_OFFLINE=1 in tests
        load_conversations("hf:HuggingFaceTB/smol-smoltalk", tok, 129, 1)


def test_parquet_rows_read_through_datasets_equal_the_json_lines(tmp_path, tok):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    jsonl = chitchat_jsonl(tmp_path / "c.jsonl", n=60)
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "c.parquet")
    a = load_conversations(f"jsonl:{jsonl}", tok, 257, 5, seed=3)
    b = load_conversations(f"parquet:{tmp_path}/*.parquet", tok, 257, 5, seed=3)
    assert a.train == b.train and a.val == b.val and len(a.train) + len(a.val) > 30


def test_the_held_out_split_is_seeded_and_keeps_source_conversations_whole(tok):
    a = load_conversations("chitchat", tok, 257, 50, seed=0, limit=2000)
    again = load_conversations("chitchat", tok, 257, 50, seed=0, limit=2000)
    other = load_conversations("chitchat", tok, 257, 50, seed=1, limit=2000)
    assert a.val == again.val and a.train == again.train and a.val != other.val
    # A conversation's windows all land on one side: the held-out ones are whole source conversations.
    windows: dict[str, list] = {}
    for n, (key, messages) in enumerate(iter_conversations("chitchat")):
        if n == 2000:
            break
        try:
            ids = render(messages, tok)[0]
        except ValueError:
            continue  # skipped by the loader too
        if len(ids) <= 257:
            windows.setdefault(key, []).append(ids)
    val = [ids for ids, _ in a.val]
    held = [k for k, ws in windows.items() if ws[0] in val]
    assert len(held) == 50
    assert sorted(val) == sorted(ids for k in held for ids in windows[k])
    assert len(a.train) == sum(len(ws) for ws in windows.values()) - len(val)
