"""Format interop: PEFT LoRA in and out, AdapterHub bottlenecks in, composable-sft diffs in.

The source format is recognised from the files' contents (:func:`detect_format`): PEFT and
AdapterHub both write ``adapter_config.json``, and AdapterHub's weights file is even called
``adapter.safetensors``. Pickles are never run: PEFT's and AdapterHub's ``.bin`` weights are not
read, and composable-sft's ``pytorch_diff.bin`` goes through a restricted unpickler.

Example:
    >>> from polyglot_adapters.convert import convert, host_from_config
    >>> host = host_from_config("models/mbert")  # architecture only, on the meta device
    >>> convert("peft_lora/", "out/lora", host=host)  # -> adapter.json + adapter.safetensors
    >>> convert("out/lora", "peft_again/", host=host, to="peft")
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from ..interfaces import HostInterface
from ..merging import SavedAdapter
from ..methods.sparse_ft import SparseDiff
from .adapterhub import import_adapterhub
from .composable_sft import import_composable_sft, restricted_load
from .detect import FORMATS, ConversionError, Detected, UnsafeArtifactError, detect_format, sniff
from .hosts import Host, host_from_config, resolve_host
from .peft import export_peft, import_peft

__all__ = [
    "FORMATS",
    "TARGETS",
    "ConversionError",
    "Detected",
    "Host",
    "SparseDiff",
    "UnsafeArtifactError",
    "convert",
    "detect_format",
    "host_from_config",
    "read_foreign",
    "resolve_host",
    "restricted_load",
    "sniff",
]

TARGETS = ("polyglot", "peft")


def read_foreign(
    src: str | os.PathLike[str],
    host: nn.Module,
    *,
    source_format: str | None = None,
    name: str | None = None,
    interface: HostInterface | str | None = None,
) -> SavedAdapter | SparseDiff:
    """Reads a checkpoint of any supported format as a polyglot-adapters object for ``host``.

    Args:
        src: Checkpoint directory (or a composable-sft diff file).
        host: The base model (a plain model, possibly on the meta device, or an ``AdaptedModel``).
        source_format: Expected format; checked against what the contents say (default: trust the contents).
        name: Adapter name (default: the source directory's name).
        interface: Host interface, when ``host`` is not a preset architecture.

    Returns:
        A :class:`SavedAdapter` (PEFT, AdapterHub, polyglot) or a :class:`SparseDiff` (composable-sft).

    Raises:
        ConversionError: Unknown or mismatched format, unsupported features, another base model.
        UnsafeArtifactError: A pickle that is not plain data.
    """
    found = detect_format(src)
    if source_format is not None and source_format != found.format:
        if source_format not in FORMATS:
            raise ConversionError(f"unknown source format {source_format!r}; choose one of {list(FORMATS)}")
        raise ConversionError(f"{src}: the contents are a {found.format} checkpoint, not {source_format}")
    resolved = resolve_host(host, interface)
    name = name or Path(src).resolve().name
    if found.format == "peft":
        return import_peft(found, resolved, name)
    if found.format == "adapters":
        return import_adapterhub(found, resolved, name)
    if found.format == "composable-sft":
        return import_composable_sft(found, resolved)
    adapter = SavedAdapter.read(found.config.parent)
    if adapter.base.get("params_sha256") != resolved.fingerprint["params_sha256"]:
        raise ConversionError(f"{src}: was trained for another base model than the one given")
    return adapter


def convert(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    host: nn.Module,
    to: str = "polyglot",
    source_format: str | None = None,
    name: str | None = None,
    interface: HostInterface | str | None = None,
) -> Path:
    """Converts a checkpoint; everything is read and checked before anything is written.

    Args:
        src: Source checkpoint (format from its contents; see :func:`read_foreign`).
        dst: Output directory.
        host: The base model the checkpoint belongs to.
        to: ``polyglot`` (adapter directory, or a sparse diff for composable-sft) or ``peft``
            (LoRA adapters only).
        source_format: Expected source format, checked against the contents.
        name: Adapter name for polyglot output (default: the source directory's name).
        interface: Host interface, when ``host`` is not a preset architecture.

    Returns:
        The output directory.

    Raises:
        ConversionError: Unsupported pair of formats or features; see :func:`read_foreign`.
    """
    if to not in TARGETS:
        raise ConversionError(f"unknown target format {to!r}; choose one of {list(TARGETS)}")
    item = read_foreign(src, host, source_format=source_format, name=name, interface=interface)
    if to == "polyglot":
        if isinstance(item, SavedAdapter) and item.source is not None and "converted_from" not in item.extra:
            raise ConversionError(f"{src}: is already a polyglot-adapters adapter")
        return item.save(dst)
    if isinstance(item, SparseDiff):
        raise ConversionError(f"{src}: a composable-sft diff has no PEFT LoRA equivalent")
    return export_peft(item, dst, resolve_host(host, interface))
