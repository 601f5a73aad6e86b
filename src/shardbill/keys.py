"""Canonical shard-key encoding and hashing: key -> bytes -> 64-bit hash -> slot.

Everything here is pure and pinned forever: the same key gives the same bytes,
hash and slot in every process, on every platform and Python version, whatever
``PYTHONHASHSEED`` is. Stored rows carry their slot, so changing any of the
rules below would silently misroute existing data. A new kind of key may be
added later under a new tag; the encodings of the kinds below never change.
The golden vectors in ``tests/test_keys.py`` hold the promise.

What a key can be:

* an ``int`` of any size, negative included (``bool`` is refused although it is
  an ``int`` subclass: ``True`` and ``1`` would collide);
* a ``str`` (encoded as UTF-8; empty and non-ASCII strings are fine, a string
  with a lone surrogate has no UTF-8 form and is refused);
* ``bytes`` (``bytearray`` and ``memoryview`` are refused: convert with
  ``bytes(...)``);
* a non-empty ``tuple`` of those scalars, one level deep (an account id plus
  other attributes: ``(account_id, "sms")``). Tuples inside tuples are
  refused.

Subclasses of ``int``, ``str``, ``bytes`` and ``tuple`` (``IntEnum``,
``StrEnum``, named tuples) encode as their plain value. Everything else
(``float``, ``None``, ``Decimal``, ``list``, ``dict``, ``set``, ``bool``, numpy
integers ...) raises :class:`~shardbill.errors.KeyTypeError`.

Encoding (``u32`` is a 4-byte unsigned big-endian length or count)::

    int    0x01  u32 n  n bytes: signed big-endian two's complement, minimal (0 -> 0x00)
    str    0x02  u32 n  n bytes: UTF-8
    bytes  0x03  u32 n  n bytes: as given
    tuple  0x04  u32 k  the k element encodings, concatenated

The type tag keeps ``1``, ``"1"``, ``b"1"`` and ``(1,)`` apart, and the
length prefix makes every encoding self-delimiting, so a tuple's encoding is
unambiguous (``("ab", "c")`` differs from ``("a", "bc")``). Note that ``42``
and ``(42,)`` are different keys on purpose: route an entity by one form
everywhere.

Hash: ``xxh3_64`` (xxhash) of the encoding with seed :data:`KEY_HASH_SEED`.

Slot: Lemire's multiply-shift reduction ``(hash * slots) >> 64``. It maps the
hash onto ``[0, slots)`` without a division, uses the hash's high bits, and
gives slot ``s`` the contiguous hash interval ``[s * 2**64 / slots,
(s + 1) * 2**64 / slots)``. That last property makes slot arithmetic easy to
reason about: with a power-of-two slot count it is simply the top
``log2(slots)`` bits of the hash, and doubling the slot count splits slot
``s`` into slots ``2s`` and ``2s + 1``. Its bias (like modulo's) is at most
``slots / 2**64`` per slot, far below anything measurable.

Example:
    >>> encode_key(1).hex()
    '010000000101'
    >>> slot_for_key("acct-42", 16384) == slot_for_key("acct-42", 16384)
    True
"""

from __future__ import annotations

from typing import Final, TypeAlias

from xxhash import xxh3_64_intdigest

from shardbill.errors import KeyTypeError, ShardMapError

__all__ = [
    "FAST_INT_LIMIT",
    "INT_PREFIXES",
    "KEY_HASH_SEED",
    "KEY_SCHEME",
    "MAX_SLOTS",
    "STR_TAG",
    "Key",
    "ScalarKey",
    "encode_key",
    "key_hash",
    "slot_for_hash",
    "slot_for_key",
]

ScalarKey: TypeAlias = int | str | bytes
"""One key component, an int (not bool), a str or bytes."""

Key: TypeAlias = int | str | bytes | tuple[int | str | bytes, ...]
"""A shard key, a scalar or a non-empty one-level tuple of scalars."""

KEY_HASH_SEED: Final[int] = 0x5348_4152_4442_494C
"""Seed of the xxh3-64 key hash, the ASCII bytes ``SHARDBIL``. Pinned forever."""

KEY_SCHEME: Final[str] = "shardbill-key-v1:xxh3_64:0x534841524442494c:lemire"
"""Names the encoding, hash, seed and reduction; a shard map document records it."""

MAX_SLOTS: Final[int] = 2**20
"""The largest slot count accepted (a map of 2**20 slots is already ~8 MiB of pointers)."""

_TAG_INT: Final = b"\x01"
_TAG_STR: Final = b"\x02"
_TAG_BYTES: Final = b"\x03"
_TAG_TUPLE: Final = b"\x04"
_MAX_LENGTH: Final = 2**32 - 1

# Tag plus length prefix for the int lengths the fast path produces (1..8 bytes).
INT_PREFIXES: Final[tuple[bytes, ...]] = tuple(_TAG_INT + n.to_bytes(4, "big") for n in range(9))
"""``INT_PREFIXES[n]`` is the header of an n-byte int encoding (used by fast paths)."""

FAST_INT_LIMIT: Final[int] = 2**63
"""Non-negative ints below this encode in at most 8 bytes (the fast path's range)."""

STR_TAG: Final = _TAG_STR
"""The tag of a str encoding: an ASCII ``s`` encodes as ``STR_TAG + len(s) (4 bytes) + s``."""

_ACCEPTED = (
    "accepted are int (not bool), str, bytes, or a non-empty tuple of those "
    "(one level deep, e.g. (account_id, 'sms'))"
)


def _too_long(n: int, what: str) -> KeyTypeError:
    return KeyTypeError(
        f"shard key {what} is {n} bytes long; the encoding allows at most {_MAX_LENGTH}: "
        "use a shorter key (e.g. a digest of it)"
    )


def _encode_int(value: int) -> bytes:
    bits = value.bit_length() if value >= 0 else (~value).bit_length()
    size = (bits >> 3) + 1  # room for the sign bit: minimal signed two's complement
    if size > _MAX_LENGTH:
        raise _too_long(size, "int")
    return _TAG_INT + size.to_bytes(4, "big") + value.to_bytes(size, "big", signed=True)


def _encode_str(value: str) -> bytes:
    try:
        data = value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise KeyTypeError(
            f"shard key str {value!r} has no UTF-8 form (lone surrogate at index "
            f"{exc.start}): decode the source text with errors='strict' or pass bytes"
        ) from None
    if len(data) > _MAX_LENGTH:
        raise _too_long(len(data), "str")
    return _TAG_STR + len(data).to_bytes(4, "big") + data


def _encode_bytes(value: bytes) -> bytes:
    if len(value) > _MAX_LENGTH:
        raise _too_long(len(value), "bytes")
    return _TAG_BYTES + len(value).to_bytes(4, "big") + value


def _encode_scalar(key: object, in_tuple: bool) -> bytes:
    # Exact types first (the common case, and the cheapest checks).
    if type(key) is str:
        return _encode_str(key)
    if type(key) is int:
        return _encode_int(key)
    if type(key) is bytes:
        return _encode_bytes(key)
    # Subclasses (IntEnum, StrEnum, ...) encode as their plain value.
    if isinstance(key, int) and not isinstance(key, bool):
        return _encode_int(int.__int__(key))
    if isinstance(key, str):
        return _encode_str(str.__str__(key))
    if isinstance(key, bytes):
        return _encode_bytes(bytes.__bytes__(key))
    where = "a tuple element" if in_tuple else "a shard key"
    if isinstance(key, tuple):
        raise KeyTypeError(
            f"{where} cannot be a tuple (got {key!r}): tuple keys are one level deep; "
            f"flatten it. {_ACCEPTED}"
        )
    if isinstance(key, bytearray | memoryview):
        hint = "convert it with bytes(...); "
    elif isinstance(key, bool):
        hint = "bool is refused because True would collide with 1; use an int or str; "
    elif isinstance(key, float):
        hint = "floats are not exact; use an int or str; "
    else:
        hint = ""
    raise KeyTypeError(f"{where} cannot be of type {type(key).__name__}: {hint}{_ACCEPTED}")


def encode_key(key: Key) -> bytes:
    """Return the canonical byte encoding of a shard key.

    Args:
        key: an int (not bool), str, bytes, or a non-empty one-level tuple of those.

    Returns:
        The type-tagged, length-prefixed encoding described in the module docstring.

    Raises:
        KeyTypeError: the key (or a tuple element) has no canonical encoding.

    Example:
        >>> encode_key(("a", 1)).hex()
        '0400000002020000000161010000000101'
    """
    if isinstance(key, tuple):  # named tuples too: they encode as the plain tuple
        if not key:
            raise KeyTypeError(
                f"a tuple shard key needs at least one element (got ()): {_ACCEPTED}"
            )
        parts = [_TAG_TUPLE, len(key).to_bytes(4, "big")]
        for item in key:
            # Inlined common cases (same bytes as _encode_scalar, half the time).
            if type(item) is int and 0 <= item < FAST_INT_LIMIT:
                size = (item.bit_length() >> 3) + 1
                parts.append(INT_PREFIXES[size])
                parts.append(item.to_bytes(size, "big"))
            else:
                parts.append(_encode_scalar(item, True))
        return b"".join(parts)
    return _encode_scalar(key, False)


def key_hash(key: Key) -> int:
    """Return the 64-bit hash of a shard key: xxh3-64 of :func:`encode_key` under the seed.

    Args:
        key: a shard key (see :func:`encode_key`).

    Returns:
        An int in ``[0, 2**64)``.

    Raises:
        KeyTypeError: the key has no canonical encoding.
    """
    if type(key) is int and 0 <= key < FAST_INT_LIMIT:
        size = (key.bit_length() >> 3) + 1
        return xxh3_64_intdigest(INT_PREFIXES[size] + key.to_bytes(size, "big"), KEY_HASH_SEED)
    if type(key) is str and key.isascii() and len(key) <= _MAX_LENGTH:
        data = _TAG_STR + len(key).to_bytes(4, "big") + key.encode("ascii")
        return xxh3_64_intdigest(data, KEY_HASH_SEED)
    return xxh3_64_intdigest(encode_key(key), KEY_HASH_SEED)


def slot_for_hash(hash64: int, slots: int) -> int:
    """Reduce a 64-bit hash to a slot in ``[0, slots)`` with ``(hash64 * slots) >> 64``.

    Args:
        hash64: an int in ``[0, 2**64)``, as returned by :func:`key_hash`.
        slots: the slot count, ``1 <= slots <= MAX_SLOTS``.

    Returns:
        The slot number.
    """
    return (hash64 * slots) >> 64


def slot_for_key(key: Key, slots: int) -> int:
    """Return the slot of a shard key among ``slots`` slots.

    Args:
        key: a shard key (see :func:`encode_key`).
        slots: the slot count, an int in ``[1, MAX_SLOTS]``.

    Returns:
        ``(key_hash(key) * slots) >> 64``, an int in ``[0, slots)``.

    Raises:
        KeyTypeError: the key has no canonical encoding.
        ShardMapError: ``slots`` is not an int in ``[1, MAX_SLOTS]`` (a ValueError).

    Example:
        >>> 0 <= slot_for_key(42, 16384) < 16384
        True
    """
    if type(slots) is not int or not 1 <= slots <= MAX_SLOTS:
        raise ShardMapError(
            f"'slots' must be an int in [1, {MAX_SLOTS}]: {slots!r}; 16384 is the usual choice"
        )
    return (key_hash(key) * slots) >> 64
