"""Key positions of TOML text: the line numbers every config error message carries."""

from __future__ import annotations

import tomllib

import tomlkit
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.config.positions import Positions

TEXT = '''\
# a comment with [brackets] and key = "value"
top = 1
[daemon]
state_dir = "/run/x"   # trailing comment

[[disk]]
name = "a"
note = """multi
line = "not a key"
"""
"quoted key" = 'C:\\p'
dotted.inner = 2

[[disk]]
name = "b"
vlans = [
  1,  # first
  [2, 3],
  { k = "v" },
]
inline = { x = 1, y = { z = "}" } }

[[switch]]
name = "s"
[[switch.port]]
name = "p0"
[[switch.port]]
name = "p1"
[[switch]]
name = "t"
[[switch.port]]
name = "q0"
'''


def test_every_key_maps_to_its_line() -> None:
    tomllib.loads(TEXT)  # the scanner only ever sees text tomllib accepted
    where = Positions(TEXT)
    expected = {
        ("top",): 2, ("daemon",): 3, ("daemon", "state_dir"): 4,
        ("disk", 0): 6, ("disk", 0, "name"): 7, ("disk", 0, "note"): 8, ("disk", 0, "quoted key"): 11,
        ("disk", 0, "dotted", "inner"): 12,
        ("disk", 1): 14, ("disk", 1, "name"): 15, ("disk", 1, "vlans"): 16, ("disk", 1, "vlans", 0): 17,
        ("disk", 1, "vlans", 1): 18, ("disk", 1, "vlans", 1, 1): 18, ("disk", 1, "vlans", 2, "k"): 19,
        ("disk", 1, "inline", "y", "z"): 21,
        ("switch", 0): 23, ("switch", 0, "port", 0, "name"): 26, ("switch", 0, "port", 1, "name"): 28,
        ("switch", 1, "name"): 30, ("switch", 1, "port", 0): 31, ("switch", 1, "port", 0, "name"): 32,
    }
    assert {path: where.line(path) for path in expected} == expected
    assert ("disk", 0, "line") not in where  # inside a multi-line string: not a key
    assert where.locate(("disk", 1, "name")) == (15, 1)


def test_a_missing_key_points_at_its_table() -> None:
    where = Positions(TEXT)
    assert where.line(("disk", 1, "path")) == 14
    assert where.line(("nothing",)) == 1


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_text_is_scanned_without_raising(text: str) -> None:
    Positions(text)


_keys = st.text(alphabet=st.sampled_from("abcxyz_-. \"'"), min_size=1, max_size=6)
_scalars = st.one_of(st.integers(-10**6, 10**6), st.booleans(), st.text(max_size=20), st.floats(allow_nan=False, allow_infinity=False))
_values = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_keys, inner, max_size=3)), max_leaves=8)
_documents = st.dictionaries(_keys, st.one_of(_values, st.lists(st.dictionaries(_keys, _values, max_size=3), min_size=1, max_size=3)), max_size=5)


def _leaves(value, path=()):
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _leaves(inner, path + (key,))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            yield from _leaves(inner, path + (index,))
    else:
        yield path


@settings(max_examples=200, deadline=None)
@given(_documents)
def test_documents_written_by_tomlkit_have_every_leaf_located(document: dict) -> None:
    text = tomlkit.dumps(document)
    data = tomllib.loads(text)
    where = Positions(text)
    for path in _leaves(data):
        if path:
            assert path in where, (path, text)
