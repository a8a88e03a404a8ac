"""A header's index, read as columns and made into entries when asked for
(rpmextents.header._Index), against a reading of each entry in turn as rpm's
headerVerifyInfo takes them: the same entries, or the same refusal of the first bad one."""

from __future__ import annotations

import struct

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from rpmextents.errors import FormatError
from rpmextents.header import HEADER_MAGIC, Header, HeaderEntry, TagType

KNOWN = {int(t) for t in TagType}


def _blob(index: list[tuple[int, int, int, int]], dl: int, data: bytes = b"") -> bytes:
    packed = b"".join(struct.pack(">IIiI", *e) for e in index)
    return HEADER_MAGIC + struct.pack(">II", len(index), dl) + packed + data


def _one_at_a_time(index: list[tuple[int, int, int, int]], dl: int) -> dict[int, HeaderEntry]:
    """Each entry read and checked in index order; a later entry of a tag replaces an earlier."""
    entries = {}
    for tag, typ, offset, count in index:
        if typ not in KNOWN:
            raise FormatError(f"header: tag {tag} has unknown type {typ}")
        if offset < 0 or offset > dl or count > dl + 1:
            raise FormatError(f"header: tag {tag} points outside the data store")
        entries[tag] = HeaderEntry(tag, TagType(typ), offset, count)
    return entries


def _outcome(make):  # type: ignore[no-untyped-def]
    try:
        return make()
    except FormatError as e:
        return f"refused: {e}"


_entry = st.tuples(
    st.sampled_from([100, 1000, 1004, 1005, 1116, 1117, 1118, 5000]),  # tags repeat
    st.one_of(st.sampled_from(sorted(KNOWN)), st.integers(0, 2**32 - 1)),
    st.one_of(st.integers(-8, 64), st.integers(-(2**31), 2**31 - 1)),
    st.one_of(st.integers(0, 65), st.integers(0, 2**32 - 1)),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_entry, max_size=12), st.one_of(st.integers(0, 64), st.integers(0, 2**32 - 1)))
@example([(1000, 6, -1, 1)], 2**32 - 1)  # negative offset under a data length past 2**31
@example([(1000, 6, 2**31 - 1, 1)], 2**32 - 1)  # the largest offset an int32 holds, in the store
@example([(1000, 6, 0, 1), (1000, 99, 0, 1)], 8)  # the second of a tag is the bad one
@example([(1000, 6, 0, 1), (1000, 4, 4, 1)], 8)  # a repeated tag: the last one counts
def test_the_index_reads_as_each_entry_read_in_turn(index: list[tuple[int, int, int, int]], dl: int) -> None:
    expected = _outcome(lambda: _one_at_a_time(index, dl))
    got = _outcome(lambda: Header(_blob(index, dl)))
    if isinstance(expected, str):
        assert got == expected
        return
    assert not isinstance(got, str), got
    assert dict(got.entries) == expected
    assert list(got.entries) == list(expected)
    for tag in {e[0] for e in index} | {1, 2**32 - 1}:
        assert (tag in got) == (tag in expected)
        assert got.entries.get(tag) == expected.get(tag)


def test_the_first_bad_entry_is_named_whatever_comes_after_it() -> None:
    index = [(1000, 6, 0, 1), (1001, 77, 0, 1), (1002, 6, 99, 1)]
    with pytest.raises(FormatError, match="tag 1001 has unknown type 77"):
        Header(_blob(index, 8))
    with pytest.raises(FormatError, match="tag 1002 points outside the data store"):
        Header(_blob([index[0], index[2], index[1]], 8))


def test_values_are_read_through_the_entries_made_on_demand() -> None:
    data = b"bash\0" + bytes(3) + struct.pack(">I", 7)  # the int aligned to 4
    h = Header(_blob([(1000, 6, 0, 1), (1009, 4, 8, 1)], 12, data))
    assert h.string(1000) == "bash" and h.ints(1009) == [7]
    assert h.entries[1009] == HeaderEntry(1009, TagType.INT32, 8, 1)
    assert h.get(1004) is None and h.entries.get(1004) is None and len(h.entries) == 2


def test_an_index_cut_short_is_refused() -> None:
    blob = _blob([(1000, 6, 0, 1)], 8)[:-5]  # the index runs past the bytes given
    with pytest.raises(struct.error):
        Header(blob)
