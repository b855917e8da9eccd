"""Tokenizers: any Hugging Face `tokenizer.json`, and the small character-level tokenizer of jdllm's shipped models.

`Tokenizer` wraps a `tokenizers.Tokenizer` and knows the diffusion special ids (`mask_id`, `eos_id`, `pad_id`).
`build_char_tokenizer(alphabet, words=())` makes a character-level tokenizer with the `tokenizers` library (a
WordLevel model over single characters, a pre-tokenizer that isolates every character, a `Fuse` decoder), so
decoding round-trips text exactly, spaces and newlines included. Optional `words` (whole alphabetic words, each
also with a leading space) become single tokens, matched before characters: the shipped arithmetic model uses
the task's word list so that a question is ~25 tokens instead of ~75, while numbers, operators and anything else
stay character by character.
"""

from __future__ import annotations

import json
import os
from typing import Iterable, Sequence

import re

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

PAD, EOS, MASK, UNK, BOS = "<|pad|>", "<|eos|>", "<|mask|>", "<|unk|>", "<|bos|>"
CHAR_SPECIALS = (PAD, EOS, MASK, UNK, BOS)

# Special-token spellings of known model families, tried in order when ids are not given.
_MASK_NAMES = (MASK, "<|mdm_mask|>", "<mask>", "[MASK]")
_EOS_NAMES = (EOS, "<|endoftext|>", "<|eot_id|>", "</s>", "<eos>")
_PAD_NAMES = (PAD, "<pad>", "[PAD]", "<|endoftext|>")


def _first_id(tk: HFTokenizer, names: Iterable[str]) -> int | None:
    for name in names:
        i = tk.token_to_id(name)
        if i is not None:
            return i
    return None


class Tokenizer:
    """A `tokenizers.Tokenizer` plus the special ids a masked-diffusion model needs."""

    def __init__(self, hf: HFTokenizer, *, mask_id: int | None = None, eos_id: int | None = None,
                 pad_id: int | None = None):
        self.hf = hf
        self._mask_id = mask_id if mask_id is not None else _first_id(hf, _MASK_NAMES)
        self._eos_id = eos_id if eos_id is not None else _first_id(hf, _EOS_NAMES)
        self._pad_id = pad_id if pad_id is not None else _first_id(hf, _PAD_NAMES)
        if self._pad_id is None:
            self._pad_id = self._eos_id

    # ------------------------------------------------------------------------------------------------ io
    @classmethod
    def from_file(cls, path: str | os.PathLike, **ids) -> "Tokenizer":
        """Load `tokenizer.json` (a file, or a directory holding one)."""
        path = str(path)
        if os.path.isdir(path):
            path = os.path.join(path, "tokenizer.json")
        return cls(HFTokenizer.from_file(path), **ids)

    def save(self, directory: str | os.PathLike) -> str:
        """Write `tokenizer.json` (and a small `special_tokens_map.json`) into `directory`; returns the json path."""
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, "tokenizer.json")
        self.hf.save(path)
        specials = {}
        for key, i in (("mask_token", self._mask_id), ("eos_token", self._eos_id), ("pad_token", self._pad_id)):
            if i is not None:
                specials[key] = self.hf.id_to_token(i)
        with open(os.path.join(directory, "special_tokens_map.json"), "w") as f:
            json.dump(specials, f, indent=2)
        return path

    # ------------------------------------------------------------------------------------------------ ids
    @property
    def mask_id(self) -> int:
        if self._mask_id is None:
            raise ValueError("this tokenizer has no mask token")
        return self._mask_id

    @property
    def eos_id(self) -> int | None:
        return self._eos_id

    @property
    def pad_id(self) -> int | None:
        return self._pad_id

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    # ------------------------------------------------------------------------------------------------ text
    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (no BOS / EOS added)."""
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=skip_special)

    def decode_until_eos(self, ids: Iterable[int]) -> str:
        """Decode generated ids up to (not including) the first EOS, skipping other special tokens."""
        ids = [int(i) for i in ids]
        if self._eos_id is not None and self._eos_id in ids:
            ids = ids[: ids.index(self._eos_id)]
        return self.decode(ids, skip_special=True)

    def __len__(self) -> int:
        return self.vocab_size


def build_char_tokenizer(alphabet: str, specials: Sequence[str] = CHAR_SPECIALS,
                         words: Sequence[str] = (), number_tokens: int = 0) -> Tokenizer:
    """A character-level tokenizer: ids 0.. are `specials` (pad, eos, mask, unk, bos), then one id per character
    of `alphabet` in the given order, then (optional) whole-word tokens: for each of `words` the word itself and
    the word with one leading space (" apples"), matched greedily (longest first, on word boundaries) before
    single characters. `number_tokens=N` (N <= 100) adds the numbers 10..N-1 as single tokens: a run of one or
    two digits that is not part of a longer digit run becomes one token ("12" -> "12"), longer numbers stay
    digit by digit. Unknown characters encode to `<|unk|>`. Decoding concatenates tokens, so
    `decode(encode(text)) == text` for every text over the alphabet."""
    chars = list(dict.fromkeys(alphabet))
    clash = set(chars) & set(specials)
    if clash:
        raise ValueError(f"alphabet characters collide with special tokens: {clash}")
    word_list = list(dict.fromkeys(w for w in words if len(w) > 1))
    for w in word_list:
        if not re.fullmatch(r"[A-Za-z]+", w):
            raise ValueError(f"word tokens must be alphabetic, got {w!r}")
        if not set(w) <= set(chars):
            raise ValueError(f"word {w!r} has characters outside the alphabet")
    word_tokens = [t for w in word_list for t in (w, " " + w)]
    if not 0 <= number_tokens <= 100:
        raise ValueError(f"number_tokens must be in [0, 100], got {number_tokens}")
    if number_tokens and not set("0123456789") <= set(chars):
        raise ValueError("number tokens need the digits in the alphabet")
    num_tokens = [str(n) for n in range(10, number_tokens)]
    vocab = {tok: i for i, tok in enumerate(list(specials) + chars + word_tokens + num_tokens)}
    hf = HFTokenizer(models.WordLevel(vocab, unk_token=UNK))
    parts = []
    if word_list:
        alternation = "|".join(re.escape(w) for w in sorted(word_list, key=lambda w: (-len(w), w)))
        words_re = rf"(?:{alternation})(?![A-Za-z])"
        parts += [rf" {words_re}", rf"(?<![A-Za-z]){words_re}"]
    if num_tokens:
        parts.append(r"(?<![0-9])[1-9][0-9](?![0-9])")
    pattern = "|".join(parts + [r"[\s\S]"])
    hf.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    hf.decoder = decoders.Fuse()
    hf.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    return Tokenizer(hf, mask_id=vocab[MASK], eos_id=vocab[EOS], pad_id=vocab[PAD])
