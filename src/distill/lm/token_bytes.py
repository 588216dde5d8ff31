"""Tokens as bytes: one tokenizer's token ids mapped to their exact bytes and back.

A token may hold part of a character, so its text alone is lossy; its bytes are
not. The OpenAI API names each token by its text and its UTF-8 `bytes`:
`distill serve` sends the exact bytes of every token id, and the API teacher
backend maps bytes back to ids with the student's tokenizer. When every token of
an answer maps, the answer can be distilled token by token; when some do not (the
endpoint's tokenizer is another one), only its text is used. Matching tokens of
two tokenizers by their bytes is also the first step of cross-tokenizer
distillation, for local teachers too.
"""

from __future__ import annotations

import re

# vLLM's `return_tokens_as_token_ids` names tokens "token_id:<id>"
TOKEN_ID_PREFIX = "token_id:"


def _byte_level_alphabet() -> dict[str, int]:
    """The byte-level BPE alphabet (GPT-2 and its descendants): each byte is written
    as one printable character, so that vocabularies are plain strings."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[chr(byte)] = byte
        else:
            chars[chr(256 + extra)] = byte
            extra += 1
    return chars


BYTE_LEVEL = _byte_level_alphabet()
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


class TokenBytes:
    """id -> bytes and bytes -> id for one tokenizer (byte-level BPE or SentencePiece)."""

    def __init__(self, tokenizer):
        special = {t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values()}
        pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        ordinary = [p for p in pieces if p is not None and p not in special]
        byte_level = all(c in BYTE_LEVEL for p in ordinary[:2000] for c in p)
        self.id_to_bytes = [_piece_bytes(piece or "", piece in special, byte_level)
                            for piece in pieces]
        # only tokens flagged special write no text: Gemma's added tokens include "\n\n"
        flagged = {t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values()
                   if getattr(t, "special", True)}
        self.special_ids = {i for i, piece in enumerate(pieces) if piece in flagged}
        # Ordinary tokens first, so they win a tie with an added token spelled the same
        # way; within each group the lower id wins (SentencePiece's "▁" and "<0x20>"
        # are both a space: the space comes back as the first of them).
        self.bytes_to_id: dict[bytes, int] = {}
        for want_special in (False, True):
            for token_id, (piece, data) in enumerate(zip(pieces, self.id_to_bytes)):
                if (piece in special) == want_special:
                    self.bytes_to_id.setdefault(data, token_id)

    def token(self, token_id: int) -> tuple[str, list[int]]:
        """(text, bytes) of one id, as the OpenAI API names a token."""
        data = self.id_to_bytes[token_id]
        return data.decode("utf-8", errors="replace"), list(data)

    def text_bytes(self, token_ids: list[int]) -> list[bytes]:
        """The bytes each token adds to the text: b"" for a special token (an end of
        turn writes no text), as samples record them for alignment."""
        return [b"" if i in self.special_ids else self.id_to_bytes[i] for i in token_ids]

    def lookup(self, text: str, data: list[int] | None) -> int | None:
        """The id the API meant by (token text, bytes), or None if this tokenizer has none."""
        if text.startswith(TOKEN_ID_PREFIX) and text[len(TOKEN_ID_PREFIX):].isdigit():
            token_id = int(text[len(TOKEN_ID_PREFIX):])
            return token_id if token_id < len(self.id_to_bytes) else None
        key = bytes(data) if data is not None else text.encode()
        return self.bytes_to_id.get(key)


def _piece_bytes(piece: str, special: bool, byte_level: bool) -> bytes:
    if special:
        return piece.encode()
    if byte_level:
        return bytes(BYTE_LEVEL[c] for c in piece)
    if match := _BYTE_PIECE.fullmatch(piece):  # SentencePiece byte fallback
        return bytes([int(match.group(1), 16)])
    return piece.replace("\u2581", " ").encode()


def same_vocabulary(first, second) -> bool:
    """Whether two tokenizers map the same strings to the same ids (then a teacher's
    token ids and top-k are the student's too)."""
    return first is second or first.get_vocab() == second.get_vocab()
