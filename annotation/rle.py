"""Label Studio's brush RLE, written for speed; byte-identical to `label_studio_sdk.converter.brush`.

The SDK's codec walks the bit stream as a Python string of '0'/'1' characters, one character per bit,
and its encoder concatenates strings per run: fine for a few masks, slow for a pull of thousands of
tasks x 28 classes (`benchmarks/annotation_rle.py` measures the ratio). The format, MSB first:

    32 bits  number of values N (the flattened RGBA layer: H * W * 4)
     5 bits  word size - 1 (8)
    4x4 bits run-length field sizes - 1 (3, 4, 8, 16)
    then tokens until N values are out:
      1 bit   1 = a run of one repeated word, 0 = a list of literal words
      2 bits  which run-length field size follows
      n bits  count - 1
      words   one word (run) or `count` words (literal)

Tests check both directions against the SDK on random and structured masks.
"""

from __future__ import annotations

import numpy as np

_WORD_BITS = 8
_SIZE_BITS = (3, 4, 8, 16)
_MAX_RUN = 1 << 16


def encode_mask(mask: np.ndarray) -> list[int]:
    """(H, W) bool or 0/255 mask -> Label Studio RLE (list of byte values) of its RGBA layer, where every
    channel of a painted pixel is 255, exactly as `label_studio_sdk.converter.brush.mask2rle` writes it."""
    flat = np.asarray(mask).reshape(-1) > 0
    n_values = flat.size * 4
    if flat.size == 0:
        raise ValueError("cannot encode an empty mask")
    change = np.flatnonzero(flat[1:] != flat[:-1])
    ends = np.append(change, flat.size - 1)
    lengths = np.diff(np.append(-1, ends)) * 4  # RGBA repeats each pixel's value 4 times: runs scale by 4
    values = flat[ends].astype(np.int64) * 255

    # A run longer than 256 goes out as 16-bit chunks of 65536 and a remainder (the SDK's split).
    long_run = lengths > 256
    full_chunks = np.where(long_run, (lengths - 1) // _MAX_RUN, 0)
    remainder = lengths - full_chunks * _MAX_RUN
    token_run = np.repeat(np.arange(lengths.size), full_chunks + 1)
    is_last = np.ones(token_run.size, dtype=bool)
    is_last[:-1] = token_run[1:] != token_run[:-1]
    token_len = np.where(is_last, remainder[token_run], _MAX_RUN)
    token_val = values[token_run]

    size_index = np.select([token_len <= 8, token_len <= 16, token_len <= 256], [0, 1, 2], 3)
    size_index = np.where(long_run[token_run], 3, size_index)
    size_bits = np.asarray(_SIZE_BITS)[size_index]
    series = (token_len > 1).astype(np.int64)
    # A single value is a literal list of one word; its count field is 0 in the 3-bit size.
    code = (series << 2) | size_index
    code = (code << size_bits) | (token_len - 1)
    code = (code << _WORD_BITS) | token_val
    nbits = 3 + size_bits + _WORD_BITS

    header = (n_values << 21) | ((_WORD_BITS - 1) << 16)
    for i, size in enumerate(_SIZE_BITS):
        header |= (size - 1) << (12 - 4 * i)
    codes = np.concatenate([[header], code])
    widths = np.concatenate([[32 + 5 + 16], nbits])
    total = int(widths.sum())
    starts = np.cumsum(widths) - widths
    owner = np.repeat(np.arange(codes.size), widths)
    shift = np.repeat(widths, widths) - 1 - (np.arange(total) - np.repeat(starts, widths))
    bits = ((codes[owner] >> shift) & 1).astype(np.uint8)
    pad = 8 - total % 8  # the SDK always pads, a whole zero byte when already aligned
    bits = np.concatenate([bits, np.zeros(pad, dtype=np.uint8)])
    return np.packbits(bits).tolist()


class _BitReader:
    def __init__(self, data: bytes) -> None:
        self.data = data + b"\x00" * 8  # reads near the end may look past it
        self.limit = len(data) * 8
        self.pos = 0

    def read(self, n: int) -> int:
        if self.pos + n > self.limit:
            raise ValueError(f"RLE stream ends early (wanted bit {self.pos + n} of {self.limit})")
        byte = self.pos >> 3
        window = int.from_bytes(self.data[byte : byte + 5], "big")
        value = (window >> (40 - (self.pos & 7) - n)) & ((1 << n) - 1)
        self.pos += n
        return value


def decode_rle(rle: list[int] | bytes) -> np.ndarray:
    """Label Studio RLE -> flat uint8 array of N values (the RGBA layer, reshape to (H, W, 4))."""
    data = bytes(rle)
    reader = _BitReader(data)
    n_values = reader.read(32)
    word_bits = reader.read(5) + 1
    if word_bits > 16:
        raise ValueError(f"RLE word size {word_bits} is not a byte-sized mask")
    sizes = [reader.read(4) + 1 for _ in range(4)]
    values: list[int] = []
    counts: list[int] = []
    filled = 0
    while filled < n_values:
        series = reader.read(1)
        count = 1 + reader.read(sizes[reader.read(2)])
        if series:
            values.append(reader.read(word_bits))
            counts.append(count)
        else:
            values.extend(reader.read(word_bits) for _ in range(count))
            counts.extend([1] * count)
        filled += count
    if filled != n_values:
        raise ValueError(f"RLE tokens cover {filled} values, the header says {n_values}")
    return np.repeat(np.asarray(values, dtype=np.uint8), np.asarray(counts, dtype=np.int64))
