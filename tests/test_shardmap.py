"""ShardMap and ReshardPlan: construction, lookups, changes, plans, JSON (unit tests)."""

from __future__ import annotations

import hashlib
import json
import pickle
from typing import Any

import attrs
import pytest

from shardbill.errors import KeyTypeError, ShardMapError
from shardbill.keys import slot_for_key
from shardbill.shardmap import ReshardPlan, ShardChange, ShardMap, SlotMove
from tests.test_keys import GOLDEN

THREE = ["a", "b", "c"]


def doc(shard_map: ShardMap) -> dict[str, Any]:
    """The map's JSON document as a dict, for editing in tests."""
    result: dict[str, Any] = json.loads(shard_map.to_json())
    return result


# -- create ------------------------------------------------------------------------------


def test_create_from_names_gives_equal_weights_and_epoch_one() -> None:
    """A list of names makes weight-1 shards, 16384 slots by default, epoch 1."""
    m = ShardMap.create(["b", "a", "c"])
    assert dict(m.shards) == {"a": 1, "b": 1, "c": 1}
    assert list(m.shards) == ["a", "b", "c"]
    assert m.slots == 16384
    assert m.epoch == 1
    assert dict(m.slot_counts) == {"a": 5462, "b": 5461, "c": 5461}


def test_create_lays_out_contiguous_blocks_in_name_order() -> None:
    """create gives each shard one contiguous block, in name order (pinned layout)."""
    m = ShardMap.create(THREE)
    assert json.loads(m.to_json())["runs"] == [
        [0, 5462, "a"],
        [5462, 10923, "b"],
        [10923, 16384, "c"],
    ]


def test_create_with_weights_apportions_by_largest_remainder() -> None:
    """Counts are floor or ceil of slots*w/W; the extras go to the largest remainders."""
    m = ShardMap.create({"x": 1, "y": 2, "z": 4}, slots=100)
    # exact shares 14.29, 28.57, 57.14: floors 14+28+57 = 99, the extra goes to y (.57)
    assert dict(m.slot_counts) == {"x": 14, "y": 29, "z": 57}
    assert m.is_balanced()


def test_equal_remainders_break_ties_by_name() -> None:
    """With equal remainders the names that sort first get the extra slots."""
    m = ShardMap.create(["d", "c", "b", "a"], slots=10)
    assert dict(m.slot_counts) == {"a": 3, "b": 3, "c": 2, "d": 2}


def test_shards_view_is_read_only() -> None:
    """The shards mapping cannot be changed through the map."""
    m = ShardMap.create(THREE)
    with pytest.raises(TypeError):
        m.shards["a"] = 5  # type: ignore[index]


@pytest.mark.parametrize(
    "name",
    ["", "-a", "_a", ".a", "a b", "a/b", "a;drop", "é", "a" * 65, "a\n", 5, None],
)
def test_invalid_shard_names_are_refused(name: object) -> None:
    """Names must match ^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$; the error names the value."""
    with pytest.raises(ShardMapError, match="shard name") as info:
        ShardMap.create(["ok", name])  # type: ignore[list-item]
    assert repr(name) in str(info.value)


def test_longest_valid_name_is_accepted() -> None:
    """A 64-character name with dots, dashes and underscores is fine."""
    name = "A1._-" + "x" * 59
    assert ShardMap.create([name]).shard_for(1) == name


@pytest.mark.parametrize("weight", [0, -1, True, 1.5, "2", None])
def test_invalid_weights_are_refused(weight: object) -> None:
    """Weights are positive ints, not bools or floats; the error names shard and value."""
    with pytest.raises(ShardMapError, match=r"weight of shard 'b' must be a positive int"):
        ShardMap.create({"a": 1, "b": weight})  # type: ignore[dict-item]


@pytest.mark.parametrize("slots", [0, -5, True, 2**20 + 1, 16384.0, "16384"])
def test_invalid_slot_counts_are_refused(slots: object) -> None:
    """slots is an int in [1, 2**20]."""
    with pytest.raises(ShardMapError, match="'slots' must be an int in"):
        ShardMap.create(THREE, slots=slots)  # type: ignore[arg-type]


def test_fewer_slots_than_shards_is_refused() -> None:
    """Every shard needs at least one slot."""
    with pytest.raises(ShardMapError, match=r"'slots' \(2\) is smaller than the number"):
        ShardMap.create(THREE, slots=2)


def test_a_shard_that_would_own_no_slot_is_refused() -> None:
    """A tiny weight against few slots is refused with the fix in the message."""
    with pytest.raises(ShardMapError, match=r"'c' .* would own no slot.*raise 'slots'"):
        ShardMap.create({"a": 10, "b": 10, "c": 1}, slots=4)


@pytest.mark.parametrize(
    ("shards", "match"),
    [
        (["a", "a"], "names shard 'a' twice"),
        ([], "is empty"),
        ({}, "is empty"),
        ("abc", "must be a list of shard names"),
        (42, "must be a list of shard names"),
    ],
)
def test_bad_shard_collections_are_refused(shards: object, match: str) -> None:
    """Duplicates, empty collections and a bare string are refused."""
    with pytest.raises(ShardMapError, match=match):
        ShardMap.create(shards)  # type: ignore[arg-type]


def test_single_slot_single_shard_map_works() -> None:
    """The smallest map: one shard, one slot."""
    m = ShardMap.create(["only"], slots=1)
    assert m.shard_for("anything") == "only"
    assert m.slot_for(123) == 0


# -- value semantics ---------------------------------------------------------------------


def test_map_is_frozen() -> None:
    """Attributes cannot be assigned."""
    m = ShardMap.create(THREE)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        m.epoch = 5  # type: ignore[misc]


def test_equal_content_means_equal_and_same_hash() -> None:
    """Maps built the same way are equal and hash equally; a different epoch is not equal."""
    m1 = ShardMap.create(["c", "a", "b"], slots=512)
    m2 = ShardMap.create({"a": 1, "b": 1, "c": 1}, slots=512)
    assert m1 == m2
    assert hash(m1) == hash(m2)
    assert len({m1, m2}) == 1
    assert m1 != m1.with_epoch(2)
    assert m1 != ShardMap.create(["a", "b", "d"], slots=512)


def test_maps_and_plans_survive_pickle() -> None:
    """A map (for worker processes) and a plan pickle and load back equal."""
    m1 = ShardMap.create({"a": 1, "b": 2}, slots=256)
    m2 = m1.add_shard("c")
    loaded = pickle.loads(pickle.dumps(m2))  # noqa: S301 - our own bytes, just written
    assert loaded == m2
    assert dict(loaded.shards) == dict(m2.shards)
    assert loaded.shard_for("acct-1") == m2.shard_for("acct-1")
    plan = m1.plan_to(m2)
    assert pickle.loads(pickle.dumps(plan)) == plan  # noqa: S301 - our own bytes


def test_repr_is_short() -> None:
    """The repr shows epoch, slots and weights, not 16384 owners."""
    m = ShardMap.create(THREE)
    assert repr(m) == "ShardMap(epoch=1, slots=16384, shards={'a': 1, 'b': 1, 'c': 1})"


def test_constructor_refuses_unknown_owners_and_wrong_length() -> None:
    """The raw constructor checks that every slot has a known owner and the length fits."""
    with pytest.raises(ShardMapError, match="no weight: \\['z'\\]"):
        ShardMap(slots=2, epoch=1, weights={"a": 1}, assignment=("a", "z"))
    with pytest.raises(ShardMapError, match="tuple of 3 shard names"):
        ShardMap(slots=3, epoch=1, weights={"a": 1}, assignment=("a", "a"))
    with pytest.raises(ShardMapError, match="own no slot"):
        ShardMap(slots=2, epoch=1, weights={"a": 1, "b": 1}, assignment=("a", "a"))
    with pytest.raises(ShardMapError, match="'epoch' must be an int >= 1"):
        ShardMap(slots=1, epoch=0, weights={"a": 1}, assignment=("a",))


# -- lookups -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key", [0, 1, -1, 2**63 - 1, 2**63, -(2**80), "", "acct-42", "日本", b"\x00", (7, "sms")]
)
def test_lookups_agree_with_the_key_module(key: Any) -> None:
    """slot_for is slot_for_key, and shard_for is the owner of that slot."""
    m = ShardMap.create({"a": 1, "b": 2, "c": 3}, slots=1000)
    assert m.slot_for(key) == slot_for_key(key, 1000)
    assert m.shard_for(key) == m.owner(m.slot_for(key)) == m.assignment[m.slot_for(key)]


@pytest.mark.parametrize(("key", "slot"), [(g[0], g[3]) for g in GOLDEN])
def test_lookups_hit_the_golden_slots(key: Any, slot: int) -> None:
    """The map's own (fast-path) lookups give the pinned golden slot of every golden key."""
    m = ShardMap.create(["a", "b", "c"])
    assert m.slot_for(key) == slot
    assert m.shard_for(key) == m.assignment[slot]


def test_lookup_of_an_unsupported_key_raises_key_type_error() -> None:
    """shard_for refuses floats and bools like the key module does."""
    m = ShardMap.create(THREE)
    for key in (1.0, True, None, [1]):
        with pytest.raises(KeyTypeError):
            m.shard_for(key)  # type: ignore[arg-type]
        with pytest.raises(KeyTypeError):
            m.slot_for(key)  # type: ignore[arg-type]


@pytest.mark.parametrize("slot", [-1, 16, True, 1.0])
def test_owner_checks_the_slot(slot: object) -> None:
    """owner() refuses slots outside [0, slots), including negative indexes."""
    m = ShardMap.create(THREE, slots=16)
    with pytest.raises(ShardMapError, match=r"'slot' must be an int in \[0, 16\)"):
        m.owner(slot)  # type: ignore[arg-type]


def test_slots_of_lists_the_owned_slots() -> None:
    """slots_of returns the ascending slots a shard owns; unknown shards are an error."""
    m = ShardMap.create(THREE, slots=9)
    assert m.slots_of("b") == (3, 4, 5)
    with pytest.raises(ShardMapError, match="'zz' is not in the map"):
        m.slots_of("zz")


# -- changes -----------------------------------------------------------------------------


def test_add_shard_moves_a_fair_share_from_every_shard() -> None:
    """Adding a 4th equal shard to 3 moves a quarter of the slots, a third from each."""
    m1 = ShardMap.create(THREE, slots=1200)
    m2 = m1.add_shard("d")
    assert m2.epoch == 2
    assert dict(m2.slot_counts) == {"a": 300, "b": 300, "c": 300, "d": 300}
    plan = m1.plan_to(m2)
    assert len(plan.moves) == 300
    assert dict(plan.flows) == {("a", "d"): 100, ("b", "d"): 100, ("c", "d"): 100}


def test_moved_slots_are_scattered_not_one_block() -> None:
    """A donor gives up slots from all over its range, not a contiguous block."""
    m1 = ShardMap.create(THREE, slots=3000)
    moved = [move.slot for move in m1.plan_to(m1.add_shard("d")).moves if move.source == "a"]
    # a owns 0..999; its 250 moved slots reach both ends and are not consecutive
    assert min(moved) < 100
    assert max(moved) > 900
    assert max(moved) - min(moved) + 1 > len(moved) * 2


def test_add_shard_keeps_holders_of_the_ceiling() -> None:
    """Shards that already hold ceil keep it when that saves a move."""
    m1 = ShardMap.create(["a", "b"], slots=11)  # a: 6, b: 5
    m2 = m1.add_shard("c")  # shares 3.67 each: two shards get 4
    # a holds 6 > 3, b holds 5 > 3: giving them the 4s moves only 3 slots (to c)
    assert dict(m2.slot_counts) == {"a": 4, "b": 4, "c": 3}
    assert len(m1.plan_to(m2).moves) == 3


def test_add_shard_refuses_existing_and_invalid_names() -> None:
    """A name already present or invalid, or a bad weight, is an error."""
    m = ShardMap.create(THREE)
    with pytest.raises(ShardMapError, match="already in the map; use reweight"):
        m.add_shard("a")
    with pytest.raises(ShardMapError, match="'name' must be"):
        m.add_shard("bad name")
    with pytest.raises(ShardMapError, match="'weight' must be a positive int"):
        m.add_shard("d", 0)


def test_remove_any_shard_moves_only_its_slots() -> None:
    """Removing a middle shard moves exactly its slots, shared by the others."""
    m1 = ShardMap.create(["a", "b", "c", "d"], slots=1200)
    m2 = m1.remove_shard("b")
    plan = m1.plan_to(m2)
    assert {move.source for move in plan.moves} == {"b"}
    assert len(plan.moves) == 300
    assert dict(m2.slot_counts) == {"a": 400, "c": 400, "d": 400}
    assert "b" not in m2.shards
    assert m2.epoch == 2


def test_remove_refuses_unknown_and_last_shard() -> None:
    """Unknown shards cannot be removed; neither can the only one."""
    with pytest.raises(ShardMapError, match="'x' is not in the map"):
        ShardMap.create(THREE).remove_shard("x")
    with pytest.raises(ShardMapError, match="it is the only shard"):
        ShardMap.create(["a"]).remove_shard("a")


def test_reweight_moves_only_what_the_new_shares_need() -> None:
    """Doubling one of two shards' weight moves a sixth of the slots to it."""
    m1 = ShardMap.create(["a", "b"], slots=600)
    m2 = m1.reweight({"b": 2})
    assert dict(m2.shards) == {"a": 1, "b": 2}
    assert dict(m2.slot_counts) == {"a": 200, "b": 400}
    assert dict(m1.plan_to(m2).flows) == {("a", "b"): 100}


def test_reweight_refuses_unknown_shards_empty_and_bad_weights() -> None:
    """reweight only changes existing shards, with valid weights."""
    m = ShardMap.create(THREE)
    with pytest.raises(ShardMapError, match="'d' is not in the map"):
        m.reweight({"d": 2})
    with pytest.raises(ShardMapError, match="non-empty mapping"):
        m.reweight({})
    with pytest.raises(ShardMapError, match="weight of shard 'a'"):
        m.reweight({"a": True})


def test_operations_do_not_change_the_original() -> None:
    """The original map is unchanged by add/remove/reweight."""
    m = ShardMap.create(THREE, slots=64)
    before = m.to_json()
    m.add_shard("d")
    m.remove_shard("a")
    m.reweight({"b": 3})
    assert m.to_json() == before


def test_operation_sequence_is_pinned() -> None:
    """The same operations always give the same map (pinned digest: history must not change)."""
    m = ShardMap.create(["s1", "s2", "s3"], slots=4096)
    m = m.add_shard("s4", 2).remove_shard("s2").reweight({"s1": 3}).add_shard("s5")
    assert m.epoch == 5
    digest = hashlib.sha256(m.to_json().encode()).hexdigest()
    assert digest == "83e183143e7d78484aec3323a4a9dbc836a0d5302540d188a32dc6c1edfe09ab"
    assert dict(m.slot_counts) == {"s1": 1756, "s3": 585, "s4": 1170, "s5": 585}


# -- plans -------------------------------------------------------------------------------


def test_plan_lists_every_changed_slot_sorted() -> None:
    """moves are exactly the slots whose owner differs, sorted, with source and target."""
    m1 = ShardMap.create(THREE, slots=300)
    m2 = m1.add_shard("d", 2)
    plan = m1.plan_to(m2)
    expected = [
        (slot, a, b)
        for slot, (a, b) in enumerate(zip(m1.assignment, m2.assignment, strict=True))
        if a != b
    ]
    assert [(mv.slot, mv.source, mv.target) for mv in plan.moves] == expected
    assert plan.moved_fraction == len(expected) / 300
    assert isinstance(plan.moved_fraction, float)
    assert (plan.source_epoch, plan.target_epoch, plan.slots) == (1, 2, 300)
    assert dict(plan.before) == {"a": 100, "b": 100, "c": 100, "d": 0}
    assert dict(plan.after) == dict(m2.slot_counts)


def test_plan_summary_is_a_readable_table() -> None:
    """summary() has a header line and one row per shard with before/after/gives/receives."""
    m1 = ShardMap.create(THREE, slots=300)
    text = m1.plan_to(m1.add_shard("d")).summary()
    lines = text.splitlines()
    assert lines[0] == "reshard plan: epoch 1 -> 2, 75 of 300 slots move (25.00%)"
    assert lines[1].split() == ["shard", "before", "after", "gives", "receives"]
    assert lines[2].split() == ["a", "100", "75", "25", "0"]
    assert lines[5].split() == ["d", "0", "75", "0", "75"]


def test_plan_between_different_slot_counts_is_refused() -> None:
    """A different slot count is a rehash of every row, not a plan."""
    with pytest.raises(ShardMapError, match="from 64 slots to 128 slots"):
        ShardMap.create(THREE, slots=64).plan_to(ShardMap.create(THREE, slots=128).with_epoch(2))


def test_plan_to_an_older_or_same_epoch_is_refused() -> None:
    """Plans only go forward in epoch; rolling back means a new, higher epoch."""
    m1 = ShardMap.create(THREE, slots=64)
    m2 = m1.add_shard("d")
    with pytest.raises(ShardMapError, match="target epoch 1 is not greater than source epoch 2"):
        m2.plan_to(m1)
    with pytest.raises(ShardMapError, match="not greater"):
        m1.plan_to(m1)
    rollback = m2.plan_to(m1.with_epoch(3))
    assert len(rollback.moves) == len(m1.plan_to(m2).moves)
    assert {move.target for move in rollback.moves} <= {"a", "b", "c"}


def test_plan_to_a_non_map_is_refused() -> None:
    """plan_to checks its argument's type."""
    with pytest.raises(ShardMapError, match="needs a ShardMap"):
        ShardMap.create(THREE).plan_to("map")  # type: ignore[arg-type]


def test_plan_constructor_checks_moves() -> None:
    """A hand-built plan with unsorted or self moves is refused."""
    change = (ShardChange(shard="a", before=1, after=1),)
    moves = (SlotMove(slot=2, source="a", target="b"), SlotMove(slot=1, source="a", target="b"))
    with pytest.raises(ShardMapError, match="sorted by slot"):
        ReshardPlan(slots=4, source_epoch=1, target_epoch=2, moves=moves, changes=change)
    with pytest.raises(ShardMapError, match="same shard"):
        ReshardPlan(
            slots=4,
            source_epoch=1,
            target_epoch=2,
            moves=(SlotMove(slot=0, source="a", target="a"),),
            changes=change,
        )


# -- JSON --------------------------------------------------------------------------------


def test_json_round_trip_is_exact() -> None:
    """from_json(to_json(m)) == m, and writing it again gives the same bytes."""
    m = ShardMap.create({"a": 1, "b": 2, "c": 3}).add_shard("d").remove_shard("b")
    text = m.to_json()
    again = ShardMap.from_json(text)
    assert again == m
    assert again.to_json() == text
    assert ShardMap.from_json(text.encode()) == m


def test_json_is_compact_sorted_and_versioned() -> None:
    """The document has sorted keys, a format and version, and runs instead of every slot."""
    m = ShardMap.create(THREE)
    text = m.to_json()
    parsed = json.loads(text)
    assert list(parsed) == sorted(parsed)
    assert parsed["format"] == "shardbill-shard-map"
    assert parsed["version"] == 1
    assert parsed["slots"] == 16384
    assert parsed["epoch"] == 1
    assert parsed["shards"] == {"a": 1, "b": 1, "c": 1}
    assert len(text.splitlines()) < 20
    assert text.endswith("}\n")


def test_equal_maps_give_byte_equal_json() -> None:
    """Maps equal by content serialise to identical text whatever the input order."""
    m1 = ShardMap.create(["b", "c", "a"]).add_shard("d")
    m2 = ShardMap.create({"c": 1, "a": 1, "b": 1}).add_shard("d")
    assert m1.to_json() == m2.to_json()


def test_hand_merged_adjacent_runs_load_the_same_map() -> None:
    """Runs may be split or listed out of order by hand; the map is the same."""
    m = ShardMap.create(["a", "b"], slots=10)
    edited = doc(m)
    edited["runs"] = [[5, 10, "b"], [2, 5, "a"], [0, 2, "a"]]
    assert ShardMap.from_json(json.dumps(edited)) == m


def _edit(**changes: Any) -> str:
    edited = doc(ShardMap.create(["a", "b"], slots=10))
    for key, value in changes.items():
        if value is _DELETE:
            del edited[key]
        else:
            edited[key] = value
    return json.dumps(edited)


_DELETE = object()


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object, got list"),
        ('{"epoch": 1, "epoch": 2}', "key 'epoch' twice"),
        (_edit(version=_DELETE), r"lacks field\(s\) \['version'\]"),
        (_edit(slots=_DELETE), r"lacks field\(s\) \['slots'\]"),
        (_edit(version=2), "'version' 2 is not supported"),
        (_edit(version=True), "'version' True is not supported"),
        (_edit(format="other"), "'format' must be 'shardbill-shard-map'"),
        (_edit(key_scheme="md5"), "'key_scheme' 'md5' differs"),
        (_edit(extra=1), r"unknown field\(s\) \['extra'\]"),
        (_edit(slots=11), r"slots 10..10 are owned by no run"),
        (_edit(slots=True), "'slots' in the shard map document must be an int"),
        (_edit(epoch=0), "'epoch' in the shard map document must be an int >= 1"),
        (_edit(shards=[]), "'shards' must be an object"),
        (_edit(shards={"a": 1, "b": 0}), "weight of shard 'b' must be a positive int"),
        (_edit(shards={"a": 1, "b": 1.0}), "weight of shard 'b' must be a positive int"),
        (_edit(shards={"a": 1, "b": 1, "c": 1}), r"shards \['c'\] have a weight but own no slot"),
        (_edit(shards={"a": 1}), "names shard 'b', which is not in 'shards'"),
        (_edit(runs=[]), "'runs' must be a non-empty list"),
        (_edit(runs=[[0, 10]]), "each run must be"),
        (_edit(runs=[[0, 10.0, "a"]]), "each run must be"),
        (_edit(runs=[[0, 6, "a"], [5, 10, "b"]]), "slots 5..5 are owned twice"),
        (_edit(runs=[[0, 4, "a"], [5, 10, "b"]]), "slots 4..4 are owned by no run"),
        (_edit(runs=[[0, 5, "a"], [5, 11, "b"]]), "out of range"),
        (_edit(runs=[[3, 3, "a"], [0, 10, "b"]]), "out of range"),
        (_edit(runs=[[0, 2, "a"], [2, 10, "b"]]), "unbalanced .*a owns 2, share 5..5"),
    ],
)
def test_damaged_documents_are_refused(text: str, match: str) -> None:
    """Each kind of damage is a ShardMapError that names the problem."""
    with pytest.raises(ShardMapError, match=match):
        ShardMap.from_json(text)


def test_unbalanced_map_loads_when_asked() -> None:
    """require_balance=False loads a deliberate placement; the next change rebalances it."""
    text = _edit(runs=[[0, 2, "a"], [2, 10, "b"]])
    m = ShardMap.from_json(text, require_balance=False)
    assert dict(m.slot_counts) == {"a": 2, "b": 8}
    assert not m.is_balanced()
    m2 = m.add_shard("c")
    assert m2.is_balanced()
    # c needs 3: b (8 -> 3 or 4) gives; a (2 -> 3 or 4) receives: nobody else moves
    plan = m.plan_to(m2)
    assert {move.source for move in plan.moves} == {"b"}
    assert len(plan.moves) == 8 - m2.slot_counts["b"]
