"""Property: a damaged adapter directory either loads exactly or fails with the library's own error.

An adapter is saved once per module; every example copies it, applies one random mutation (a
truncation, flipped bytes, an edited, added or dropped JSON key) and loads the copy into a fresh
host. Any exception other than :class:`PolyglotAdaptersError` fails the test, and so does a load
that "succeeds" with tensors different from those in the file.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import make_host, randomize
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from safetensors.torch import load as st_load

from polyglot_adapters import AdaptedModel, BottleneckConfig, LoraConfig
from polyglot_adapters.errors import PolyglotAdaptersError
from polyglot_adapters.io import CONFIG_NAME, SCHEMA, WEIGHTS_NAME
from polyglot_adapters.summary import describe_adapter

PRISTINE = make_host()  # deep-copied per example: cheaper than building a host
FILES = (CONFIG_NAME, WEIGHTS_NAME)


class Saved:
    """A saved adapter directory and its tensors (a plain class: hypothesis reports it by its short repr)."""

    def __init__(self, directory: Path, tensors: dict[str, torch.Tensor]) -> None:
        self.directory = directory
        self.tensors = tensors

    def __repr__(self) -> str:
        return f"Saved({self.directory.name!r})"


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Saved]:
    root = tmp_path_factory.mktemp("saved")
    configs = {"lang": BottleneckConfig.language(), "lora": LoraConfig(r=4, alpha=8, targets=("q", "v"))}
    out = {}
    for key, config in configs.items():
        am = AdaptedModel(copy.deepcopy(PRISTINE))
        am.add_adapter(key, config)
        am.train_adapters(key)
        randomize(am, seed=len(out))
        directory = am.save_adapter(key, root / key)
        out[key] = Saved(directory, {k: v.detach().clone() for k, v in am.adapter_state_dict(key).items()})
    return out


# ------------------------------------------------------------------------------------------ mutations
def _resign(directory: Path) -> None:
    """Makes adapter.json vouch for the (mutated) tensor file, so that the parser itself is exercised."""
    doc = json.loads((directory / CONFIG_NAME).read_text())
    doc["tensors_sha256"] = hashlib.sha256((directory / WEIGHTS_NAME).read_bytes()).hexdigest()
    (directory / CONFIG_NAME).write_text(json.dumps(doc))


@dataclasses.dataclass(frozen=True)
class Truncate:
    file: str
    keep: int  # taken modulo the file size, so the file always gets shorter
    resign: bool = False

    def apply(self, directory: Path) -> None:
        data = (directory / self.file).read_bytes()
        (directory / self.file).write_bytes(data[: self.keep % len(data)])
        if self.resign:
            _resign(directory)


@dataclasses.dataclass(frozen=True)
class Flip:
    file: str
    flips: tuple[tuple[int, int], ...]  # (offset modulo the file size, non-zero XOR mask)
    resign: bool = False

    def apply(self, directory: Path) -> None:
        data = bytearray((directory / self.file).read_bytes())
        for offset, mask in self.flips:
            data[offset % len(data)] ^= mask
        (directory / self.file).write_bytes(bytes(data))
        if self.resign:
            _resign(directory)


def _parent(doc: Any, path: tuple[Any, ...]) -> Any:
    node = doc
    for part in path[:-1]:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            return None
    return node


@dataclasses.dataclass(frozen=True)
class SetKey:
    """Sets (or adds) a JSON key; a path through a missing or scalar node leaves the file as it is."""

    path: tuple[Any, ...]
    value: Any

    def apply(self, directory: Path) -> None:
        doc = json.loads((directory / CONFIG_NAME).read_text())
        node, last = _parent(doc, self.path), self.path[-1]
        if isinstance(node, dict) and isinstance(last, str):
            node[last] = self.value
        elif isinstance(node, list) and isinstance(last, int) and last < len(node):
            node[last] = self.value
        (directory / CONFIG_NAME).write_text(json.dumps(doc))


@dataclasses.dataclass(frozen=True)
class DropKey:
    path: tuple[Any, ...]

    def apply(self, directory: Path) -> None:
        doc = json.loads((directory / CONFIG_NAME).read_text())
        node, last = _parent(doc, self.path), self.path[-1]
        if isinstance(node, dict) and last in node:
            del node[last]
        elif isinstance(node, list) and isinstance(last, int) and last < len(node):
            del node[last]
        (directory / CONFIG_NAME).write_text(json.dumps(doc))


TOP = ("schema", "schema_version", "name", "method", "config", "base", "tensors_sha256")
CONFIG_KEYS = (
    "method",
    "placement",
    "positions",
    "reduction_factor",
    "non_linearity",
    "scaling",
    "invertible",
    "invertible_reduction",
    "layers",
    "r",
    "alpha",
    "dropout",
    "targets",
)
BASE_KEYS = ("interface", "model_type", "hidden_size", "num_layers", "params_sha256")
KNOWN_PATHS = (
    [(k,) for k in TOP]
    + [("config", k) for k in CONFIG_KEYS]
    + [("base", k) for k in BASE_KEYS]
    + [("config", "positions", 0), ("config", "targets", 0), ("config", "targets", 1), ("config", "layers", 0)]
)
paths = st.sampled_from(KNOWN_PATHS) | st.builds(
    lambda parent, key: (*parent, key), st.sampled_from([(), ("config",), ("base",)]), st.text(max_size=6)
)

# Values that a plausible (or hostile) adapter.json could hold. Numbers stay out of the range
# where a config would make the loader allocate gigabytes before noticing the shape mismatch
# (e.g. r=10**8); the huge values below overflow the size computation instead of allocating.
INTERESTING = [
    None,
    True,
    False,
    0,
    1,
    -1,
    2,
    3,
    4,
    16,
    99,
    0.0,
    -0.0,
    0.5,
    2.0,
    -1.0,
    1e-300,
    5e-324,
    float("inf"),
    float("-inf"),
    float("nan"),
    2**62,
    2**64,
    -(2**63),
    "",
    "a.b",
    "relu",
    "softmax",
    "ffn",
    "attn",
    "series",
    "parallel",
    "bottleneck",
    "lora",
    "bert",
    "roberta",
    SCHEMA,
    "0" * 64,
    [],
    ["ffn"],
    ["attn", "ffn"],
    ["q"],
    ["("],
    [".*"],
    [0],
    [1],
    [7],
    [0, 0],
    {},
    {"method": "lora"},
    {"method": "bottleneck"},
]
floats = (
    st.floats(min_value=1e-3, max_value=1e300)
    | st.floats(min_value=-1e300, max_value=-1e-3)
    | st.floats(min_value=0, max_value=1e-250)
)
scalars = (
    st.sampled_from(INTERESTING) | st.none() | st.booleans() | st.integers(-1000, 1000) | floats | st.text(max_size=8)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=5,
)
# Size-like config fields and edge values for them: some overflow a layer's size computation.
SIZE_PATHS = [("config", k) for k in ("reduction_factor", "invertible_reduction", "r", "scaling", "alpha", "dropout")]
EDGE_NUMBERS = [0, -1, 1, 10**4, 2**62, 2**64, 0.0, 1e-3, 1e-300, 5e-324, float("inf"), float("nan")]
offsets = st.integers(0, 1 << 16)
mutations = st.one_of(
    st.builds(Truncate, st.sampled_from(FILES), offsets),
    st.builds(Truncate, st.just(WEIGHTS_NAME), offsets, st.just(True)),
    st.builds(
        Flip,
        st.sampled_from(FILES),
        st.lists(st.tuples(offsets, st.integers(1, 255)), min_size=1, max_size=6).map(tuple),
    ),
    st.builds(
        Flip,
        st.just(WEIGHTS_NAME),
        st.lists(st.tuples(offsets, st.integers(1, 255)), min_size=1, max_size=3).map(tuple),
        st.just(True),
    ),
    st.builds(SetKey, paths, json_values),
    st.builds(SetKey, st.sampled_from(SIZE_PATHS), st.sampled_from(EDGE_NUMBERS)),
    st.builds(SetKey, st.sampled_from(SIZE_PATHS[:3]), st.sampled_from(EDGE_NUMBERS[3:])),  # weighted up
    st.builds(DropKey, st.sampled_from(KNOWN_PATHS)),
)
keys = st.sampled_from(["lang", "lora"])

# Hostile files found by hand; they run on every invocation, whatever the random search draws.
EXAMPLES = [
    ("lang", SetKey(("config", "reduction_factor"), 5e-324)),
    ("lang", SetKey(("config", "invertible_reduction"), 1e-300)),
    ("lora", SetKey(("config", "r"), 2**62)),
    ("lora", SetKey(("config", "targets"), ["("])),
    ("lang", SetKey(("config", "layers"), [7])),
    ("lang", SetKey(("config", "layers"), [])),  # invertible with no blocks: IndexError in find_sites
    ("lang", SetKey(("base", "hidden_size"), 32)),
    ("lang", DropKey(("config", "positions"))),
    ("lora", Flip(WEIGHTS_NAME, ((9, 0x20),), True)),
    ("lang", Truncate(WEIGHTS_NAME, 100, True)),
]

EXAMPLE_IDS = [f"{key}-{type(m).__name__}-{getattr(m, 'path', getattr(m, 'file', ''))}" for key, m in EXAMPLES]
EXAMPLE_IDS = [f"{i}-{text}".replace(" ", "").replace("'", "") for i, text in enumerate(EXAMPLE_IDS)]

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def mutated_copy(saved: Saved, mutation: Any, root: Path) -> Path:
    directory = root / "copy"
    shutil.copytree(saved.directory, directory)
    mutation.apply(directory)
    return directory


def bits(tensor: torch.Tensor) -> torch.Tensor:
    """Bit pattern of a tensor, so that NaNs read from a re-signed file compare equal to themselves."""
    return tensor.detach().contiguous().flatten().view(torch.uint8)


def expected_tensors(saved: Saved, mutation: Any, directory: Path) -> dict[str, torch.Tensor]:
    if getattr(mutation, "resign", False):  # the file was changed *and* re-vouched for: it is the truth
        return st_load((directory / WEIGHTS_NAME).read_bytes())
    return saved.tensors


# ------------------------------------------------------------------------------------------ properties
def check_load(saved: Saved, mutation: Any) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = mutated_copy(saved, mutation, Path(tmp))
        am = AdaptedModel(copy.deepcopy(PRISTINE))
        try:
            name = am.load_adapter(directory)
        except PolyglotAdaptersError as err:
            assert am.adapters == {}, "a failed load attached an adapter"
            assert "\n" not in str(err), f"error message is not one line: {err}"
            return
        expected = expected_tensors(saved, mutation, directory)
        loaded = am.adapter_state_dict(name)
        assert sorted(loaded) == sorted(expected)
        for k, value in loaded.items():
            assert value.dtype == expected[k].dtype and value.shape == expected[k].shape, k
            assert torch.equal(bits(value), bits(expected[k])), k


def check_describe(saved: Saved, mutation: Any) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = mutated_copy(saved, mutation, Path(tmp))
        try:
            summary = describe_adapter(directory)
        except PolyglotAdaptersError as err:
            assert "\n" not in str(err), f"error message is not one line: {err}"
            return
        expected = expected_tensors(saved, mutation, directory)
        assert summary["parameters"] == sum(t.numel() for t in expected.values())
        assert summary["tensors"] == len(expected)
        json.dumps(summary)  # the CLI prints it as JSON: it must serialise


@SETTINGS
@given(key=keys, mutation=mutations)
def test_mutated_adapter_loads_exactly_or_raises_library_error(saved: dict[str, Saved], key: str, mutation) -> None:
    note(f"mutation: {mutation!r}")
    check_load(saved[key], mutation)


@SETTINGS
@given(key=keys, mutation=mutations)
def test_mutated_adapter_describes_or_raises_library_error(saved: dict[str, Saved], key: str, mutation) -> None:
    note(f"mutation: {mutation!r}")
    check_describe(saved[key], mutation)


@pytest.mark.parametrize(("key", "mutation"), EXAMPLES, ids=EXAMPLE_IDS)
def test_hostile_examples_load_exactly_or_raise_library_error(saved: dict[str, Saved], key: str, mutation) -> None:
    check_load(saved[key], mutation)


@pytest.mark.parametrize(("key", "mutation"), EXAMPLES, ids=EXAMPLE_IDS)
def test_hostile_examples_describe_or_raise_library_error(saved: dict[str, Saved], key: str, mutation) -> None:
    check_describe(saved[key], mutation)
