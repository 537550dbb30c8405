"""A Tokenizer as a `transformers` fast tokenizer, the form `AutoTokenizer.from_pretrained` loads.

The ids are those of `Tokenizer.to_hf()` (the same byte-level BPE and split pattern). Each of the
tokenizer's special tokens, whatever they are, becomes a special token of the fast tokenizer: it
is matched whole where its text appears, as transformers tokenizers do (`Tokenizer.encode` keeps
such text as text), and `decode(..., skip_special_tokens=True)` leaves it out. Roles such as
`eos_token` name one of them; by default <|endoftext|> is the end of a text and its start, as in
GPT-2.
"""

from __future__ import annotations

from collections.abc import Mapping

from scratchllm.tokenizer.bpe import GPT2_PATTERN
from scratchllm.tokenizer.encoding import EOT, Tokenizer
from scratchllm.util.errors import UserError

ROLES = ("bos_token", "eos_token", "unk_token", "pad_token")  # transformers' names for special-token roles


def default_roles(tok: Tokenizer) -> dict[str, str]:
    """<|endoftext|> as the start and end of a text when the tokenizer has it (GPT-2's convention)."""
    return {"bos_token": EOT, "eos_token": EOT} if EOT in tok.special_tokens else {}


def fast_tokenizer(tok: Tokenizer, model_max_length: int | None = None,
                   roles: Mapping[str, str] | None = None):
    """A `transformers.PreTrainedTokenizerFast` giving tok's ids, with all of tok's special tokens.

    roles maps a transformers role (bos_token, eos_token, unk_token, pad_token) to one of the special
    tokens; None means `default_roles(tok)`.
    """
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    roles = default_roles(tok) if roles is None else dict(roles)
    unknown = {r: t for r, t in roles.items() if r not in ROLES or t not in tok.special_tokens}
    if unknown:
        raise UserError(f"special-token roles {unknown} name no role in {ROLES} or no special token of "
                        f"{tok.name} ({', '.join(tok.special_tokens)})")
    backend = tok.to_hf()
    # Sorted by id, so the file lists them in the order of the vocabulary.
    specials = sorted(tok.special_tokens, key=tok.special_tokens.__getitem__)
    backend.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    kwargs = {"model_max_length": model_max_length} if model_max_length else {}
    # transformers 5 reads the older name too (as extra_special_tokens), so both 4.x and 5.x list them.
    extra = [s for s in specials if s not in roles.values()]
    return PreTrainedTokenizerFast(tokenizer_object=backend, **roles, additional_special_tokens=extra,
                                   **kwargs)


def from_tokenizer_json(path) -> Tokenizer:
    """Our Tokenizer back from a byte-level BPE tokenizer.json (as `fast_tokenizer` writes it, or
    GPT-2's): ranks from the vocabulary, the split pattern, the added tokens as special tokens."""
    import json
    from pathlib import Path

    from scratchllm.tokenizer.encoding import _bytes_to_unicode

    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
        specials = {t["content"]: int(t["id"]) for t in obj.get("added_tokens", [])}
        to_byte = {c: b for b, c in _bytes_to_unicode().items()}
        ranks = {bytes(to_byte[c] for c in s): int(i) for s, i in obj["model"]["vocab"].items()
                 if s not in specials}
        pre = obj["pre_tokenizer"]
        steps = pre["pretokenizers"] if pre.get("type") == "Sequence" else [pre]
        split = [s for s in steps if s.get("type") == "Split"]
        pattern = split[0]["pattern"]["Regex"] if split else GPT2_PATTERN
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
        raise UserError(f"{path}: not a byte-level BPE tokenizer.json ({type(e).__name__}: {e})") from None
    return Tokenizer(ranks, pattern, specials, name=Path(path).parent.name)
