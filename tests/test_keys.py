"""Canonical key encoding, hashing and slot reduction (shardbill.keys)."""

from __future__ import annotations

import decimal
import enum
import json
import os
import random
import subprocess
import sys
from collections.abc import Callable
from typing import NamedTuple

import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from shardbill.errors import KeyTypeError, ShardMapError
from shardbill.keys import (
    KEY_HASH_SEED,
    Key,
    encode_key,
    key_hash,
    slot_for_hash,
    slot_for_key,
)

# Pinned forever: every stored row carries the slot computed from these rules.
# (key, canonical encoding as hex, xxh3-64 hash, slot at 16384 slots)
GOLDEN: list[tuple[Key, str, int, int]] = [
    (0, "010000000100", 15069641577963984874, 13384),
    (1, "010000000101", 173112677702241927, 153),
    (-1, "0100000001ff", 8209544362453935302, 7291),
    (127, "01000000017f", 10616897040582617678, 9429),
    (128, "01000000020080", 11452811103930308198, 10172),
    (-128, "010000000180", 6265621537367401211, 5564),
    (-129, "0100000002ff7f", 1635738067133273014, 1452),
    (255, "010000000200ff", 12882898876720426408, 11442),
    (256, "01000000020100", 15282390234285622216, 13573),
    (2**63 - 1, "01000000087fffffffffffffff", 210985906074714466, 187),
    (2**63, "0100000009008000000000000000", 339508149792557802, 301),
    (-(2**63), "01000000088000000000000000", 9217720208752292200, 8186),
    (2**64, "0100000009010000000000000000", 4397613797648152855, 3905),
    (-(2**64) - 1, "0100000009feffffffffffffffff", 2089899769066654161, 1856),
    (10**30, "010000000d0c9f2c9cd04674edea40000000", 14043009872886069813, 12472),
    ("", "0200000000", 7097981117134526345, 6304),
    ("1", "020000000131", 16689890313424839003, 14823),
    ("acct-42", "0200000007616363742d3432", 16409374090903237802, 14574),
    ("é", "0200000002c3a9", 8877048177305049406, 7884),
    ("日本", "0200000006e697a5e69cac", 11272397580131530924, 10011),
    ("😀", "0200000004f09f9880", 7242648818094170905, 6432),
    (b"", "0300000000", 13686259232587373200, 12155),
    (b"1", "030000000131", 16587328210032099761, 14732),
    (b"\x00\xff", "030000000200ff", 3654478499184444533, 3245),
    ((1,), "0400000001010000000101", 2788449794244871378, 2476),
    (
        (1, "1", b"1"),
        "0400000003010000000101020000000131030000000131",
        8302709212989945048,
        7374,
    ),
    (("acct", 42), "040000000202000000046163637401000000012a", 6956090020644476728, 6178),
    ((-7, ""), "04000000020100000001f90200000000", 734060275052394465, 651),
]


def decode(data: bytes) -> Key:
    """Decode the documented format (an independent reading of the spec, for the tests)."""

    def scalar(pos: int) -> tuple[int | str | bytes, int]:
        tag, size = data[pos], int.from_bytes(data[pos + 1 : pos + 5], "big")
        body = data[pos + 5 : pos + 5 + size]
        assert len(body) == size
        end = pos + 5 + size
        if tag == 1:
            assert size >= 1
            value = int.from_bytes(body, "big", signed=True)
            # minimal: one byte less would not hold the value
            assert size == 1 or int.from_bytes(body[1:], "big", signed=True) != value
            return value, end
        if tag == 2:
            return body.decode("utf-8"), end
        assert tag == 3
        return bytes(body), end

    if data[0] == 4:
        count = int.from_bytes(data[1:5], "big")
        pos, items = 5, []
        for _ in range(count):
            item, pos = scalar(pos)
            items.append(item)
        assert pos == len(data)
        return tuple(items)
    value, pos = scalar(0)
    assert pos == len(data)
    return value


scalars = st.one_of(
    st.integers(min_value=-(2**200), max_value=2**200),
    st.text(),
    st.binary(),
)
keys = st.one_of(scalars, st.lists(scalars, min_size=1, max_size=6).map(tuple))


@pytest.mark.parametrize(("key", "encoding", "hash64", "slot"), GOLDEN)
def test_golden_vectors_never_change(key: Key, encoding: str, hash64: int, slot: int) -> None:
    """Encoding, hash and slot of each golden key are exactly the pinned values."""
    assert encode_key(key).hex() == encoding
    assert key_hash(key) == hash64
    assert slot_for_key(key, 16384) == slot


def test_seed_is_the_documented_constant() -> None:
    """The seed is the ASCII bytes 'SHARDBIL' and the hash is plain xxh3-64 under it."""
    assert int.from_bytes(b"SHARDBIL", "big") == KEY_HASH_SEED
    for key, encoding, hash64, _slot in GOLDEN:
        assert xxhash.xxh3_64_intdigest(bytes.fromhex(encoding), seed=KEY_HASH_SEED) == hash64, key


def test_hashes_do_not_depend_on_pythonhashseed() -> None:
    """Another interpreter with a different PYTHONHASHSEED computes the same hashes and slots."""
    code = (
        "import ast, json, sys\n"
        "from shardbill.keys import key_hash, slot_for_key\n"
        "keys = ast.literal_eval(sys.stdin.read())\n"
        "print(json.dumps([[key_hash(k), slot_for_key(k, 16384)] for k in keys]))\n"
    )
    keys_text = repr([key for key, _encoding, _hash, _slot in GOLDEN])
    expected = [[hash64, slot] for _key, _encoding, hash64, slot in GOLDEN]
    for seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", code],
            input=keys_text,
            capture_output=True,
            text=True,
            check=True,
            env=env,
        ).stdout
        assert json.loads(out) == expected


def test_int_str_bytes_and_one_tuple_encode_differently() -> None:
    """1, '1', b'1' and (1,) are four different keys."""
    encodings = {encode_key(k) for k in (1, "1", b"1", (1,))}
    assert len(encodings) == 4


def test_tuple_boundaries_are_unambiguous() -> None:
    """Length prefixes keep ('ab', 'c') and ('a', 'bc') apart."""
    assert encode_key(("ab", "c")) != encode_key(("a", "bc"))
    assert encode_key((b"", b"x")) != encode_key((b"x", b""))


@pytest.mark.property
@settings(max_examples=300, deadline=None)
@given(keys)
def test_encoding_decodes_back_to_the_key(key: Key) -> None:
    """Every accepted key's encoding follows the spec and decodes back, so it is injective."""
    assert decode(encode_key(key)) == key


@pytest.mark.property
@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=-(2**70), max_value=2**70))
def test_fast_int_path_matches_the_general_encoding(key: int) -> None:
    """key_hash's int fast path gives the hash of the general encoding for every int."""
    assert key_hash(key) == xxhash.xxh3_64_intdigest(encode_key(key), seed=KEY_HASH_SEED)
    assert key_hash((key,)) == xxhash.xxh3_64_intdigest(encode_key((key,)), seed=KEY_HASH_SEED)


@pytest.mark.property
@settings(max_examples=200, deadline=None)
@given(keys, st.integers(min_value=1, max_value=2**19))
def test_doubling_the_slot_count_splits_each_slot_in_two(key: Key, slots: int) -> None:
    """With multiply-shift, slot s at 2S slots is a child of slot s // 2 at S slots."""
    assert slot_for_key(key, 2 * slots) // 2 == slot_for_key(key, slots)


@pytest.mark.property
@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=2**64 - 1), st.integers(min_value=0, max_value=20))
def test_power_of_two_slots_take_the_top_bits(hash64: int, bits: int) -> None:
    """For 2**k slots the reduction is the hash's top k bits."""
    assert slot_for_hash(hash64, 2**bits) == hash64 >> (64 - bits)


class Color(enum.IntEnum):
    """An IntEnum for the subclass test."""

    RED = 7


class Product(enum.StrEnum):
    """A StrEnum that overrides encode, which must not be used."""

    SMS = "sms"

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        """A deliberately wrong encode."""
        return b"wrong"


class Route(NamedTuple):
    """A named tuple key."""

    account: int
    product: str


def test_subclasses_encode_as_their_plain_values() -> None:
    """IntEnum, StrEnum (even with an overridden encode) and named tuples encode as plain."""
    assert encode_key(Color.RED) == encode_key(7)
    assert encode_key(Product.SMS) == encode_key("sms")
    assert encode_key(Route(42, "sms")) == encode_key((42, "sms"))
    assert encode_key((Color.RED, Product.SMS)) == encode_key((7, "sms"))


@pytest.mark.parametrize(
    ("key", "type_name"),
    [
        (True, "bool"),
        (False, "bool"),
        (1.0, "float"),
        (None, "NoneType"),
        ({"a": 1}, "dict"),
        ([1], "list"),
        ({1}, "set"),
        (frozenset({1}), "frozenset"),
        (decimal.Decimal(1), "Decimal"),
        (bytearray(b"1"), "bytearray"),
        (memoryview(b"1"), "memoryview"),
        (object(), "object"),
    ],
)
def test_unsupported_types_are_refused_with_the_type_named(key: object, type_name: str) -> None:
    """Each unsupported type raises KeyTypeError naming the type and what is accepted."""
    with pytest.raises(KeyTypeError, match=type_name) as info:
        encode_key(key)  # type: ignore[arg-type]
    assert "accepted are int (not bool), str, bytes" in str(info.value)
    assert isinstance(info.value, TypeError)
    with pytest.raises(KeyTypeError):
        key_hash(key)  # type: ignore[arg-type]


def test_bool_is_refused_inside_a_tuple_too() -> None:
    """(1, True) is refused, so it cannot collide with (1, 1)."""
    with pytest.raises(KeyTypeError, match="a tuple element cannot be of type bool"):
        encode_key((1, True))


def test_nested_and_empty_tuples_are_refused() -> None:
    """Tuples are one level deep and non-empty."""
    with pytest.raises(KeyTypeError, match="one level deep"):
        encode_key((1, (2, 3)))  # type: ignore[arg-type]
    with pytest.raises(KeyTypeError, match="at least one element"):
        encode_key(())


def test_a_lone_surrogate_is_refused() -> None:
    """A str with no UTF-8 form raises KeyTypeError pointing at the bad character."""
    with pytest.raises(KeyTypeError, match="lone surrogate at index 1"):
        encode_key("a\ud800")


@pytest.mark.parametrize("slots", [0, -1, 2**20 + 1, True, 16384.0, "16384"])
def test_slot_count_is_validated(slots: object) -> None:
    """slot_for_key refuses slot counts outside [1, 2**20] with a ShardMapError."""
    with pytest.raises(ShardMapError, match="'slots' must be an int"):
        slot_for_key(1, slots)  # type: ignore[arg-type]


def test_slot_is_multiply_shift_of_the_hash() -> None:
    """slot_for_key(k, S) == (key_hash(k) * S) >> 64 for power-of-two and other counts."""
    for key in ("acct-1", 99, (5, "x")):
        for slots in (1, 7, 1000, 16384, 2**20):
            assert slot_for_key(key, slots) == (key_hash(key) * slots) >> 64
            assert 0 <= slot_for_key(key, slots) < slots


def _chi_square(counts: list[int], total: int) -> float:
    expected = total / len(counts)
    return sum((c - expected) ** 2 / expected for c in counts)


def _seeded_random_ints(total: int) -> list[Key]:
    rng = random.Random(20240601)
    return [rng.getrandbits(96) - 2**95 for _ in range(total)]


@pytest.mark.parametrize(
    "make_keys",
    [
        pytest.param(lambda n: list(range(n)), id="sequential-ints"),
        pytest.param(lambda n: [f"acct-{i}" for i in range(n)], id="strings"),
        pytest.param(lambda n: [(i, "sms") for i in range(n)], id="tuples"),
        pytest.param(lambda n: [i.to_bytes(4, "big") for i in range(n)], id="bytes"),
        pytest.param(_seeded_random_ints, id="seeded-random-ints"),
    ],
)
def test_keys_spread_evenly_over_slots(make_keys: Callable[[int], list[Key]]) -> None:
    """Chi-square of 131072 structured keys over 1024 slots is within 6 sigma of its mean.

    For a uniform hash the statistic is chi-square with k - 1 = 1023 degrees of
    freedom: mean 1023, variance 2 * 1023, so sigma ~ 45.2. A band of +-6 sigma
    ([752, 1294]) is missed with probability < 1e-6 by a good hash, and the keys
    are fixed, so the test is deterministic. A broken hash fails it either way:
    too uneven (clustered slots) gives a huge statistic, too even (e.g. slot =
    key mod k on sequential keys) gives one near 0.
    """
    slots, total = 1024, 131072
    counts = [0] * slots
    for key in make_keys(total):
        counts[slot_for_key(key, slots)] += 1
    statistic = _chi_square(counts, total)
    sigma = (2 * (slots - 1)) ** 0.5
    assert slots - 1 - 6 * sigma < statistic < slots - 1 + 6 * sigma


@pytest.mark.property
@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40), st.integers(min_value=1, max_value=2**20))
def test_fast_text_path_matches_the_general_encoding(key: str, slots: int) -> None:
    """key_hash's and the shard map's text fast path (ASCII) give the general encoding's
    hash and slot for every text, ASCII or not."""
    from shardbill import ShardMap

    general = xxhash.xxh3_64_intdigest(encode_key(key), seed=KEY_HASH_SEED)
    assert key_hash(key) == general
    assert ShardMap.create(["a"], slots=slots).slot_for(key) == slot_for_key(key, slots)
    assert slot_for_key(key, slots) == (general * slots) >> 64
