"""Adapter directories: round trips, cross-model loading, clear errors, atomic writes, no pickle."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import TINY, host_output, make_host, randomize
from safetensors import safe_open
from transformers import BertConfig, BertForMaskedLM

from polyglot_adapters import AdaptedModel, BottleneckConfig, LoraConfig
from polyglot_adapters.errors import (
    BaseModelMismatchError,
    ConfigError,
    CorruptArtifactError,
    MissingArtifactError,
    PolyglotAdaptersError,
    SchemaVersionError,
    UnknownMethodError,
)
from polyglot_adapters.io import CONFIG_NAME, WEIGHTS_NAME, atomic_write_json, fingerprint_mismatch

CONFIGS = {
    "language": BottleneckConfig.language(),
    "houlsby-parallel": BottleneckConfig(placement="parallel", positions=("attn", "ffn"), reduction_factor=4),
    "lora": LoraConfig(r=4, alpha=8, targets=("q", "v", "ffn_out")),
}


def trained(kind: str = "bert-mlm", config=None, name: str = "a", seed: int = 0) -> AdaptedModel:
    """An AdaptedModel over a fresh host with one active adapter of random (non-identity) weights."""
    am = AdaptedModel(make_host(kind))
    am.add_adapter(name, config if config is not None else BottleneckConfig.language())
    am.train_adapters(name)
    randomize(am, seed=seed)
    am.set_active(name)
    return am


def snapshot(am: AdaptedModel, name: str) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in am.adapter_state_dict(name).items()}


def assert_same_tensors(left: dict[str, torch.Tensor], right: dict[str, torch.Tensor]) -> None:
    assert sorted(left) == sorted(right)
    for key in left:
        assert left[key].dtype == right[key].dtype, key
        assert torch.equal(left[key], right[key]), key


def outputs(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return host_output(model, ids)


def edit_json(directory: Path, change: Callable[[dict], None]) -> None:
    doc = json.loads((directory / CONFIG_NAME).read_text())
    change(doc)
    (directory / CONFIG_NAME).write_text(json.dumps(doc))


def resign(directory: Path) -> None:
    """Makes adapter.json vouch for the current tensor file, so the parser itself is exercised."""
    digest = hashlib.sha256((directory / WEIGHTS_NAME).read_bytes()).hexdigest()
    edit_json(directory, lambda doc: doc.__setitem__("tensors_sha256", digest))


def assert_one_line_naming(err: BaseException, path: Path) -> None:
    message = str(err)
    assert isinstance(err, PolyglotAdaptersError)
    assert str(path) in message, message
    assert "\n" not in message, message


# ------------------------------------------------------------------------------------------ round trips
@pytest.mark.parametrize("key", sorted(CONFIGS))
def test_round_trip_into_fresh_host(key: str, ids: torch.Tensor, tmp_path: Path) -> None:
    am = trained(config=CONFIGS[key])
    expected = outputs(am, ids)
    assert not torch.equal(expected, outputs(make_host(), ids)), "random weights must change the output"
    saved = am.save_adapter("a", tmp_path / "a")
    assert saved == tmp_path / "a"

    other = AdaptedModel(make_host())
    assert other.load_adapter(tmp_path / "a") == "a"
    assert other.adapters == {"a": CONFIGS[key]}
    assert_same_tensors(snapshot(other, "a"), snapshot(am, "a"))
    other.set_active("a")
    assert torch.equal(outputs(other, ids), expected)
    assert other.num_parameters("a") == am.num_parameters("a")


def test_round_trip_of_two_adapters_in_one_model(ids: torch.Tensor, tmp_path: Path) -> None:
    am = trained(config=CONFIGS["language"], name="lang")
    am.add_adapter("task", CONFIGS["lora"])
    am.train_adapters("task")
    randomize(am, seed=5)
    for name in ("lang", "task"):
        am.save_adapter(name, tmp_path / name)

    other = AdaptedModel(make_host())
    for name in ("task", "lang"):  # load order must not matter
        other.load_adapter(tmp_path / name)
    for name in ("lang", "task"):
        assert_same_tensors(snapshot(other, name), snapshot(am, name))
        am.set_active(name)
        other.set_active(name)
        assert torch.equal(outputs(other, ids), outputs(am, ids))


@pytest.mark.parametrize("key", ["language", "lora"])
def test_masked_lm_adapter_loads_into_backbone(key: str, ids: torch.Tensor, tmp_path: Path) -> None:
    am = trained("bert-mlm", CONFIGS[key])
    am.save_adapter("a", tmp_path / "a")

    bare = make_host("bert")
    # The very backbone the adapter was trained on (the MLM model's encoder has no pooler).
    result = bare.load_state_dict(make_host("bert-mlm").bert.state_dict(), strict=False)
    assert not result.unexpected_keys and all(k.startswith("pooler.") for k in result.missing_keys)
    backbone = AdaptedModel(bare)
    assert backbone.base_fingerprint == am.base_fingerprint
    assert backbone.load_adapter(tmp_path / "a") == "a"
    assert_same_tensors(snapshot(backbone, "a"), snapshot(am, "a"))
    backbone.set_active("a")
    # Same backbone weights and the same adapter: the MLM model's encoder output matches.
    with torch.no_grad():
        expected = am.model.bert(input_ids=ids).last_hidden_state
        assert torch.equal(backbone(input_ids=ids).last_hidden_state, expected)


def test_backbone_adapter_loads_into_masked_lm(ids: torch.Tensor, tmp_path: Path) -> None:
    am = trained("bert", CONFIGS["language"])
    am.save_adapter("a", tmp_path / "a")
    host = make_host("bert-mlm")
    host.bert.load_state_dict(make_host("bert").state_dict(), strict=False)  # the same backbone weights
    mlm = AdaptedModel(host)
    mlm.load_adapter(tmp_path / "a")
    assert_same_tensors(snapshot(mlm, "a"), snapshot(am, "a"))


@pytest.mark.parametrize("key", ["houlsby-parallel", "lora"])
def test_load_some_layers_only(key: str, ids: torch.Tensor, tmp_path: Path) -> None:
    am = trained("bert-mlm", CONFIGS[key])
    am.save_adapter("a", tmp_path / "a")
    lower = AdaptedModel(make_host("bert-mlm"))
    lower.load_adapter(tmp_path / "a", layers=[0])
    kept, every = snapshot(lower, "a"), snapshot(am, "a")
    assert kept and set(kept) == {k for k in every if ".layer.0." in k}
    assert_same_tensors(kept, {k: every[k] for k in kept})
    assert lower.adapters["a"].layers == (0,)
    # The same as the full adapter with block 1's part switched off (its output projection zeroed).
    with torch.no_grad():
        for name, param in am.model.named_parameters():
            if (
                ".layer.1." in name
                and ".adapters.a." in name
                and name.rsplit(".", 1)[-1] in ("bn_up", "bn_up_bias", "lora_B")
            ):
                param.zero_()
    am.set_active("a")
    lower.set_active("a")
    torch.testing.assert_close(outputs(lower, ids), outputs(am, ids))
    for bad in ([2], []):
        with pytest.raises(ConfigError, match="choose among the adapter's blocks"):
            AdaptedModel(make_host("bert-mlm")).load_adapter(tmp_path / "a", layers=bad)


def test_load_under_another_name(ids: torch.Tensor, tmp_path: Path) -> None:
    am = trained()
    am.save_adapter("a", tmp_path / "a")
    other = AdaptedModel(make_host())
    assert other.load_adapter(tmp_path / "a", name="other") == "other"
    assert list(other.adapters) == ["other"]
    assert_same_tensors(snapshot(other, "other"), snapshot(am, "a"))
    other.set_active("other")
    assert torch.equal(outputs(other, ids), outputs(am, ids))
    # The saved name is still free; loading the same directory twice needs two names.
    assert other.load_adapter(tmp_path / "a") == "a"
    assert sorted(other.adapters) == ["a", "other"]


def test_loading_a_taken_name_raises_config_error(ids: torch.Tensor, tmp_path: Path) -> None:
    am = trained()
    am.save_adapter("a", tmp_path / "a")
    before = outputs(am, ids)
    params = snapshot(am, "a")
    with pytest.raises(ConfigError, match="already exists"):
        am.load_adapter(tmp_path / "a")
    with pytest.raises(ConfigError):
        am.load_adapter(tmp_path / "a", name="a")
    assert list(am.adapters) == ["a"]
    assert_same_tensors(snapshot(am, "a"), params)
    assert torch.equal(outputs(am, ids), before)


# ------------------------------------------------------------------------------------------ errors
def saved_dir(tmp_path: Path, config=None, kind: str = "bert-mlm") -> Path:
    am = trained(kind, config)
    return am.save_adapter("a", tmp_path / "saved")


def wide_host() -> torch.nn.Module:
    torch.manual_seed(0)
    return BertForMaskedLM(BertConfig(**{**TINY, "hidden_size": 32})).eval()


def deep_host() -> torch.nn.Module:
    torch.manual_seed(0)
    return BertForMaskedLM(BertConfig(**{**TINY, "num_hidden_layers": 3})).eval()


def shallow_host() -> torch.nn.Module:
    torch.manual_seed(0)
    return BertForMaskedLM(BertConfig(**{**TINY, "num_hidden_layers": 1})).eval()


@pytest.mark.parametrize(
    ("make_other", "field"),
    [
        (wide_host, "hidden_size"),
        (deep_host, "num_layers"),
        (shallow_host, "num_layers"),
        (lambda: make_host("roberta"), "model_type"),
    ],
    ids=["wider", "deeper", "shallower", "other-model-type"],
)
@pytest.mark.parametrize("key", ["language", "lora"])
def test_wrong_base_model(make_other, field: str, key: str, tmp_path: Path) -> None:
    directory = saved_dir(tmp_path, CONFIGS[key])
    am = AdaptedModel(make_other())
    with pytest.raises(BaseModelMismatchError, match=field) as info:
        am.load_adapter(directory)
    assert_one_line_naming(info.value, directory)
    assert am.adapters == {}


@pytest.mark.parametrize("key", ["language", "lora"])
def test_same_architecture_with_other_weights_is_refused(key: str, tmp_path: Path) -> None:
    directory = saved_dir(tmp_path, CONFIGS[key])
    other = AdaptedModel(make_host(seed=1))  # another initialisation: names and shapes all match
    with pytest.raises(BaseModelMismatchError, match="other weights in embeddings, block 0, block 1") as info:
        other.load_adapter(directory)
    assert_one_line_naming(info.value, directory)
    assert other.adapters == {}
    retrained = make_host()
    with torch.no_grad():  # a copy with only its top block retrained (e.g. a masked-LM host's own top layers)
        for p in retrained.bert.encoder.layer[1].parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(2)) * 0.1 * p.std())
    with pytest.raises(BaseModelMismatchError, match=r"other weights in block 1 \(same architecture\)"):
        AdaptedModel(retrained).load_adapter(directory)
    assert AdaptedModel(retrained).load_adapter(directory, check_base=False) == "a"
    saved = json.loads((directory / CONFIG_NAME).read_text())["base"]
    rounded = AdaptedModel(make_host().to(torch.bfloat16))  # the same weights in another dtype match
    assert fingerprint_mismatch(saved, rounded.base_fingerprint) is None


@pytest.mark.parametrize("make_other", [wide_host, deep_host, shallow_host], ids=["wider", "deeper", "shallower"])
@pytest.mark.parametrize("key", ["language", "lora"])
def test_wrong_base_without_check_fails_cleanly_on_shapes(make_other, key: str, tmp_path: Path) -> None:
    directory = saved_dir(tmp_path, CONFIGS[key])
    am = AdaptedModel(make_other())
    with pytest.raises(CorruptArtifactError) as info:
        am.load_adapter(directory, check_base=False)
    assert_one_line_naming(info.value, directory)
    assert am.adapters == {}
    assert not [n for n, _ in am.model.named_parameters() if ".adapters." in n]


@pytest.mark.parametrize("key", ["language", "lora"])
def test_wrong_base_without_check_loads_when_shapes_fit(key: str, ids: torch.Tensor, tmp_path: Path) -> None:
    source = trained("bert-mlm", CONFIGS[key])
    directory = source.save_adapter("a", tmp_path / "a")
    roberta = AdaptedModel(make_host("roberta"))
    assert roberta.load_adapter(directory, check_base=False) == "a"
    assert_same_tensors(snapshot(roberta, "a"), snapshot(source, "a"))


def _set(path: str, value) -> Callable[[Path], None]:
    def mutate(directory: Path) -> None:
        def change(doc: dict) -> None:
            *parents, last = path.split(".")
            node = doc
            for part in parents:
                node = node[part]
            node[last] = value

        edit_json(directory, change)

    return mutate


def _unknown_method(directory: Path) -> None:
    _set("method", "no-such-method")(directory)
    _set("config.method", "no-such-method")(directory)


def _truncate(name: str, keep: float) -> Callable[[Path], None]:
    def mutate(directory: Path) -> None:
        data = (directory / name).read_bytes()
        (directory / name).write_bytes(data[: int(len(data) * keep)])

    return mutate


def _flip(name: str, offsets: tuple[int, ...], resigned: bool = False) -> Callable[[Path], None]:
    def mutate(directory: Path) -> None:
        data = bytearray((directory / name).read_bytes())
        for offset in offsets:
            data[offset % len(data)] ^= 0x5A
        (directory / name).write_bytes(bytes(data))
        if resigned:
            resign(directory)

    return mutate


def _truncate_resigned(directory: Path) -> None:
    _truncate(WEIGHTS_NAME, 0.5)(directory)
    resign(directory)


def _garbage_header_resigned(directory: Path) -> None:
    data = (directory / WEIGHTS_NAME).read_bytes()
    header = int.from_bytes(data[:8], "little")
    (directory / WEIGHTS_NAME).write_bytes(data[:8] + b"{" + b"x" * (header - 1) + data[8 + header :])
    resign(directory)


def _remove(name: str) -> Callable[[Path], None]:
    return lambda directory: (directory / name).unlink()


def _remove_dir(directory: Path) -> None:
    shutil.rmtree(directory)


# (mutation, expected error type, file that the message names: "json", "weights" or "dir")
BROKEN = {
    "unknown-method": (_unknown_method, UnknownMethodError, "json"),
    "schema-version-99": (_set("schema_version", 99), SchemaVersionError, "json"),
    "schema-version-0": (_set("schema_version", 0), SchemaVersionError, "json"),
    "schema-version-string": (_set("schema_version", "1"), SchemaVersionError, "json"),
    "unknown-schema-name": (_set("schema", "someone-else/adapter"), SchemaVersionError, "json"),
    "truncated-weights": (_truncate(WEIGHTS_NAME, 0.5), CorruptArtifactError, "weights"),
    "empty-weights": (_truncate(WEIGHTS_NAME, 0.0), CorruptArtifactError, "weights"),
    "flipped-weights-data": (_flip(WEIGHTS_NAME, (-5, -300)), CorruptArtifactError, "weights"),
    "flipped-weights-header": (_flip(WEIGHTS_NAME, (3, 20, 40)), CorruptArtifactError, "weights"),
    "truncated-weights-resigned": (_truncate_resigned, CorruptArtifactError, "weights"),
    "garbage-header-resigned": (_garbage_header_resigned, CorruptArtifactError, "weights"),
    "flipped-header-resigned": (_flip(WEIGHTS_NAME, (9,), resigned=True), CorruptArtifactError, "weights"),
    "renamed-tensor-resigned": (_flip(WEIGHTS_NAME, (12,), resigned=True), CorruptArtifactError, "dir"),
    "truncated-json": (_truncate(CONFIG_NAME, 0.5), CorruptArtifactError, "json"),
    "json-garbled": (_flip(CONFIG_NAME, (0,)), CorruptArtifactError, "json"),
    "json-not-utf8": (lambda d: (d / CONFIG_NAME).write_bytes(b"\xff\xfe{}"), CorruptArtifactError, "json"),
    "json-list": (lambda d: (d / CONFIG_NAME).write_text("[1, 2]"), CorruptArtifactError, "json"),
    "missing-json": (_remove(CONFIG_NAME), MissingArtifactError, "json"),
    "missing-weights": (_remove(WEIGHTS_NAME), MissingArtifactError, "weights"),
    "missing-dir": (_remove_dir, MissingArtifactError, "dir"),
    "missing-key": (lambda d: edit_json(d, lambda doc: doc.pop("base")), CorruptArtifactError, "json"),
    "mistyped-key": (_set("config", ["not", "a", "dict"]), CorruptArtifactError, "json"),
    "checksum-edited": (_set("tensors_sha256", "0" * 64), CorruptArtifactError, "weights"),
    "config-unknown-key": (_set("config.colour", "blue"), ConfigError, "json"),
    "config-bad-value": (_set("config.reduction_factor", -1), ConfigError, "json"),
    "config-bad-type": (_set("config.positions", "ffn"), ConfigError, "json"),
    "config-bad-activation": (_set("config.non_linearity", "softmax"), ConfigError, "json"),
    "config-method-mismatch": (_set("config.method", "lora"), PolyglotAdaptersError, "json"),
    "method-disagrees": (_set("method", "lora"), CorruptArtifactError, "dir"),
    "config-shape-mismatch": (_set("config.reduction_factor", 4), CorruptArtifactError, "dir"),
    "base-fingerprint-edited": (_set("base.params_sha256", "f" * 64), BaseModelMismatchError, "dir"),
    "bad-name": (_set("name", "has.a.dot"), ConfigError, "dir"),
}


def _named(directory: Path, which: str) -> Path:
    return {"json": directory / CONFIG_NAME, "weights": directory / WEIGHTS_NAME, "dir": directory}[which]


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_artifact_raises_its_own_error_naming_the_file(case: str, tmp_path: Path) -> None:
    mutate, error, which = BROKEN[case]
    directory = saved_dir(tmp_path)
    mutate(directory)
    am = AdaptedModel(make_host())
    with pytest.raises(error) as info:
        am.load_adapter(directory)
    assert_one_line_naming(info.value, _named(directory, which))
    assert am.adapters == {}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_failed_load_leaves_the_model_unchanged(case: str, ids: torch.Tensor, tmp_path: Path) -> None:
    mutate, error, _ = BROKEN[case]
    directory = saved_dir(tmp_path)
    mutate(directory)
    am = trained(config=CONFIGS["lora"], name="keep", seed=3)
    adapters, params, before = am.adapters, snapshot(am, "keep"), outputs(am, ids)
    adapter_params = sorted(n for n, _ in am.model.named_parameters() if ".adapters." in n)
    with pytest.raises(error):
        am.load_adapter(directory)
    assert am.adapters == adapters
    assert am.active == "keep"
    assert_same_tensors(snapshot(am, "keep"), params)
    assert sorted(n for n, _ in am.model.named_parameters() if ".adapters." in n) == adapter_params
    assert torch.equal(outputs(am, ids), before)
    am.set_active(None)
    assert torch.equal(outputs(am, ids), outputs(make_host(), ids))


def test_missing_artifact_error_is_a_file_not_found_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        AdaptedModel(make_host()).load_adapter(tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("key", "value"),
    [("layers", [7]), ("positions", ["nowhere"]), ("layers", [0, 5]), ("layers", [])],
)
def test_config_that_does_not_fit_the_host_names_the_file(key: str, value, tmp_path: Path) -> None:
    """A well-formed config that selects sites this host lacks: ConfigError naming adapter.json."""
    directory = saved_dir(tmp_path)
    _set(f"config.{key}", value)(directory)
    am = AdaptedModel(make_host())
    with pytest.raises(ConfigError) as info:
        am.load_adapter(directory)
    assert am.adapters == {}
    assert_one_line_naming(info.value, directory / CONFIG_NAME)


def test_bad_lora_target_regex_names_the_file(tmp_path: Path) -> None:
    directory = saved_dir(tmp_path, CONFIGS["lora"])
    _set("config.targets", ["("])(directory)
    with pytest.raises(ConfigError) as info:
        AdaptedModel(make_host()).load_adapter(directory)
    assert_one_line_naming(info.value, directory / CONFIG_NAME)


# Values that pass config validation but whose layers cannot be allocated. Each one fails before any
# memory is touched (size overflow), so these cases are safe to run anywhere.
UNBUILDABLE = [
    ("language", "reduction_factor", 5e-324),  # int(16 / 5e-324) -> OverflowError (inf)
    ("language", "reduction_factor", 1e-200),  # a bottleneck of 1.6e201 units -> TypeError in torch.empty
    ("language", "invertible_reduction", 5e-324),  # fails after the FFN layers were already attached
    ("lora", "r", 2**62),  # storage size overflow -> RuntimeError
    ("lora", "r", 2**64),  # does not fit a C long -> TypeError
]


@pytest.mark.parametrize(("key", "field", "value"), UNBUILDABLE)
def test_unbuildable_config_raises_library_error(key: str, field: str, value, tmp_path: Path) -> None:
    directory = saved_dir(tmp_path, CONFIGS[key])
    _set(f"config.{field}", value)(directory)
    am = AdaptedModel(make_host())
    with pytest.raises(PolyglotAdaptersError) as info:
        am.load_adapter(directory)
    assert str(directory) in str(info.value)
    assert am.adapters == {}


@pytest.mark.parametrize(("key", "field", "value"), UNBUILDABLE)
def test_any_failed_add_leaves_no_stale_layers(key: str, field: str, value, ids: torch.Tensor, tmp_path: Path) -> None:
    """Whatever a failed load raises, no half-built adapter stays attached to the host."""
    directory = saved_dir(tmp_path, CONFIGS[key])
    _set(f"config.{field}", value)(directory)
    good = trained(config=LoraConfig(r=2, targets=("q",)), seed=4).save_adapter("a", tmp_path / "good")
    am = AdaptedModel(make_host())
    with pytest.raises(Exception):  # noqa: B017  (the type is checked by the test above)
        am.load_adapter(directory)
    assert am.adapters == {}
    assert not [n for n, _ in am.model.named_parameters() if ".adapters." in n]
    # The name is free again; another adapter under it behaves exactly as it does alone.
    am.load_adapter(good)
    am.set_active("a")
    reference = AdaptedModel(make_host())
    reference.load_adapter(good)
    reference.set_active("a")
    assert torch.equal(outputs(am, ids), outputs(reference, ids))


def test_json_with_huge_integer_is_corrupt_artifact(tmp_path: Path) -> None:
    """Python's int-digit limit makes json.loads raise a plain ValueError; it must become CorruptArtifactError."""
    directory = saved_dir(tmp_path)
    text = (directory / CONFIG_NAME).read_text()
    (directory / CONFIG_NAME).write_text(text.replace('"scaling": 1.0', '"scaling": ' + "9" * 5000))
    with pytest.raises(CorruptArtifactError) as info:
        AdaptedModel(make_host()).load_adapter(directory)
    assert_one_line_naming(info.value, directory / CONFIG_NAME)


def test_deeply_nested_json_is_corrupt_artifact(tmp_path: Path) -> None:
    """json.loads raises RecursionError on deep nesting; it must become CorruptArtifactError."""
    directory = saved_dir(tmp_path)
    (directory / CONFIG_NAME).write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CorruptArtifactError) as info:
        AdaptedModel(make_host()).load_adapter(directory)
    assert_one_line_naming(info.value, directory / CONFIG_NAME)


# ------------------------------------------------------------------------------------------ writing
def test_saving_over_an_existing_adapter_replaces_both_files_atomically(tmp_path: Path) -> None:
    target = tmp_path / "a"
    first = trained(config=CONFIGS["language"], seed=1)
    first.save_adapter("a", target)
    (target / "README.md").write_text("notes about this adapter\n")
    (target / "sub").mkdir()
    (target / "sub" / "keep.bin").write_bytes(b"\x00\x01")
    old_json, old_weights = (target / CONFIG_NAME).read_bytes(), (target / WEIGHTS_NAME).read_bytes()

    second = trained(config=CONFIGS["lora"], seed=2)
    second.save_adapter("a", target)
    assert (target / CONFIG_NAME).read_bytes() != old_json
    assert (target / WEIGHTS_NAME).read_bytes() != old_weights
    assert sorted(p.name for p in target.iterdir()) == sorted(["README.md", "sub", CONFIG_NAME, WEIGHTS_NAME])
    assert not list(target.glob(".adapter*.tmp"))
    assert not list(tmp_path.rglob("*.tmp"))
    assert (target / "README.md").read_text() == "notes about this adapter\n"
    assert (target / "sub" / "keep.bin").read_bytes() == b"\x00\x01"

    meta = json.loads((target / CONFIG_NAME).read_text())
    assert meta["method"] == "lora"
    assert meta["tensors_sha256"] == hashlib.sha256((target / WEIGHTS_NAME).read_bytes()).hexdigest()
    other = AdaptedModel(make_host())
    other.load_adapter(target)
    assert_same_tensors(snapshot(other, "a"), snapshot(second, "a"))


def test_save_creates_missing_parent_directories(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "er" / "a"
    trained().save_adapter("a", target)
    assert sorted(p.name for p in target.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]


def test_failed_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "a"
    target.mkdir()
    (target / WEIGHTS_NAME).mkdir()  # os.replace onto a directory fails
    (target / WEIGHTS_NAME / "x").write_text("x")
    with pytest.raises(OSError):
        trained().save_adapter("a", target)
    assert not list(target.glob(".adapter*.tmp"))
    assert not (target / CONFIG_NAME).exists(), "adapter.json must not vouch for a tensor file that was not written"


def test_save_of_unknown_adapter_raises(tmp_path: Path) -> None:
    with pytest.raises(PolyglotAdaptersError):
        trained().save_adapter("nope", tmp_path / "x")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("key", sorted(CONFIGS))
def test_nothing_written_uses_pickle(key: str, tmp_path: Path) -> None:
    am = trained(config=CONFIGS[key])
    directory = am.save_adapter("a", tmp_path / "a")
    weights = (directory / WEIGHTS_NAME).read_bytes()
    assert not weights.startswith(b"\x80"), "pickle protocol header"
    assert not weights.startswith(b"PK"), "torch.save zip archive"
    expected = snapshot(am, "a")
    with safe_open(str(directory / WEIGHTS_NAME), framework="pt") as handle:
        assert sorted(handle.keys()) == sorted(expected)
        loaded = {k: handle.get_tensor(k) for k in handle.keys()}
    assert_same_tensors(loaded, expected)

    meta = json.loads((directory / CONFIG_NAME).read_bytes().decode("utf-8"))
    assert meta["schema"] == "polyglot-adapters/adapter"
    assert meta["schema_version"] == 1
    assert meta["name"] == "a"
    assert meta["method"] == CONFIGS[key].method
    assert meta["config"] == json.loads(json.dumps(CONFIGS[key].to_dict()))
    assert meta["base"] == am.base_fingerprint
    assert meta["tensors_sha256"] == hashlib.sha256(weights).hexdigest()


def test_atomic_write_json_sorted_and_keeps_the_old_file_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    atomic_write_json(path, {"b": 1, "a": "é"})
    assert path.read_bytes() == b'{\n  "a": "\\u00e9",\n  "b": 1\n}\n'
    atomic_write_json(path, {"a": "é"}, ensure_ascii=False)
    assert path.read_text(encoding="utf-8") == '{\n  "a": "é"\n}\n'
    with pytest.raises(TypeError):
        atomic_write_json(path, {"a": object()})  # not serialisable: fails before anything is written
    assert json.loads(path.read_text(encoding="utf-8")) == {"a": "é"}
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temporary file left behind
