"""Property: a mutated config (keys dropped, wrong types, out-of-range numbers, unknown keys,
strings, odd --set words) either resolves or fails with an HlbError: never another exception.
Nothing here trains; it only resolves."""

from __future__ import annotations

import math
import tempfile
import tomllib
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hlbcli.config import to_dict
from hlbcli.layers import dump_toml, load_preset
from hlbcli.errors import HlbError
from hlbcli.plugins import known_tricks
from hlbcli.resolve import resolve

BASE = load_preset("smoke")
TRICKS = known_tricks()


def _paths(d: dict, prefix: tuple = ()) -> list[tuple]:
    out = []
    for k, v in d.items():
        out.append((*prefix, k))
        if isinstance(v, dict):
            out += _paths(v, (*prefix, k))
    return out


# every existing key, plus sections of inactive tricks and keys that exist nowhere
PATHS = _paths(BASE) + [(t,) for t in TRICKS] + [(t, "size") for t in TRICKS] + [("train", "epoch"), ("trian",)]
names = st.from_regex(r"[a-z_]{1,8}", fullmatch=True)
scalars = st.one_of(
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.sampled_from([0, -1, 1, 2, 3, 7, 64, 10**9]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.5, 1e-30, 1e30, 0.999, 1.0]),
    st.text(max_size=12),
    st.sampled_from(["synthetic", "cifar10", "auto", "on", "off", "fp16", ""]),
)
values = st.one_of(
    scalars,
    st.lists(st.integers(-4, 300), max_size=7),
    st.lists(st.sampled_from([*TRICKS, "nope", "EMA"]), max_size=5),
    st.lists(scalars, max_size=3),
    st.dictionaries(names, scalars, max_size=3),
)
mutation = st.one_of(
    st.tuples(st.just("drop"), st.sampled_from(PATHS)),
    st.tuples(st.just("put"), st.sampled_from(PATHS), values),
    st.tuples(st.just("put"), st.tuples(names), values),
    st.tuples(st.just("put"), st.tuples(st.sampled_from(list(BASE)), names), values),
)
set_words = st.one_of(
    st.builds(lambda p, v: ".".join(p) + "=" + v, st.sampled_from(PATHS), st.text(max_size=10)),
    st.builds(lambda p, v: ".".join(p) + "=" + dump_toml({"v": v})[4:], st.sampled_from(PATHS), scalars),
    st.text(max_size=20),
)


def mutate(data: dict, ops) -> dict:
    import copy

    d = copy.deepcopy(data)
    for op in ops:
        path = op[1]
        node = d
        for k in path[:-1]:
            nxt = node.get(k)
            if not isinstance(nxt, dict):
                nxt = node[k] = {}
            node = nxt
        if op[0] == "drop":
            node.pop(path[-1], None)
        else:
            node[path[-1]] = op[2]
    return d


def _no_nan(x) -> bool:
    if isinstance(x, float):
        return not math.isnan(x)
    if isinstance(x, dict):
        return all(_no_nan(v) for v in x.values())
    if isinstance(x, list):
        return all(_no_nan(v) for v in x)
    return True


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=st.lists(mutation, min_size=1, max_size=4),
    as_preset=st.booleans(),
    sets=st.lists(set_words, max_size=2),
    enable=st.lists(st.sampled_from(TRICKS), max_size=1),
    disable=st.lists(st.sampled_from(TRICKS), max_size=1),
)
def test_mutated_config_validates_or_fails_cleanly(ops, as_preset, sets, enable, disable):
    data = mutate(BASE, ops)
    text = dump_toml(data)
    if _no_nan(data):
        assert tomllib.loads(text) == data  # dump_toml writes what it was given
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "mutated.toml"
        f.write_text(text, encoding="utf-8")
        try:
            if as_preset:  # the whole config, keys really dropped
                cfg, tm = resolve(str(f), None, sets, enable, disable)
            else:  # layered over the real preset
                cfg, tm = resolve("smoke", str(f), sets, enable, disable)
        except HlbError as e:
            assert e.line().strip()  # (the CLI prints it on one line, control characters escaped)
            assert 1 <= e.exit_code <= 2
            return
    # a config that resolves is one `hlb config show` can print and read back
    shown = to_dict(cfg)
    assert tomllib.loads(dump_toml(shown)) == shown
    assert list(cfg.tricks) == tm.trick_names()
    assert cfg.train.lr > 0 and math.isfinite(cfg.train.lr) and cfg.train.epochs > 0


@settings(max_examples=30, deadline=None)
@given(st.text(max_size=60))
def test_any_text_as_config_file(text):
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "c.toml"
        f.write_text(text, encoding="utf-8")
        try:
            resolve("smoke", str(f))
        except HlbError:
            pass
