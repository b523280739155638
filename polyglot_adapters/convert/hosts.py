"""The base model a conversion maps names and fingerprints onto."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import AdapterConfig
from ..interfaces import HostInterface, find_interface
from ..io import fingerprint
from ..model import AdaptedModel
from ..registry import get_method
from ..sites import base_linears, unwrap
from .detect import ConversionError

__all__ = ["Host", "find_parameter", "host_from_config", "resolve_host"]


@dataclasses.dataclass(frozen=True)
class Host:
    """A base model seen by a converter.

    Attributes:
        module: The (unwrapped) host model; may live on the meta device.
        interface: Its interface.
        fingerprint: Its base fingerprint, as saved adapters record it.
        root: The backbone root (``"bert."`` for ``BertForMaskedLM``, ``""`` for ``BertModel``).
        linears: Backbone-relative key -> linear layer.
    """

    module: nn.Module
    interface: HostInterface
    fingerprint: dict[str, Any]
    root: str
    linears: dict[str, nn.Linear]

    def key_of(self, path: str, where: str) -> str:
        """Maps a module path from another library to the backbone-relative key it ends with.

        Raises:
            ConversionError: If no linear layer of this host, or more than one, matches.
        """
        return _unique_suffix(path, self.linears, where)

    def check(self, config: AdapterConfig, tensors: dict[str, torch.Tensor], where: str) -> None:
        """Checks that ``tensors`` are exactly the parameters ``config`` builds on this host.

        Raises:
            ConversionError: Naming the first tensor that is missing, unexpected or of another shape.
        """
        spec = get_method(config.method)
        built: dict[str, nn.Module] = {}
        expected = {}
        with torch.device("meta"):
            for site in spec.find_sites(config, self.module, self.interface):
                built[site.path] = spec.build_layer(config, site, built.get(site.peer) if site.peer else None)
                if site.peer is None:
                    for pname, param in built[site.path].named_parameters():
                        expected[f"{site.key}.{pname}"] = tuple(param.shape)
        found = {k: tuple(v.shape) for k, v in tensors.items()}
        if found != expected:
            bad = sorted(k for k in found.keys() | expected.keys() if found.get(k) != expected.get(k))
            raise ConversionError(
                f"{where}: tensor {bad[0]} is {found.get(bad[0])}, the base model needs {expected.get(bad[0])}"
            )

    def parameter(self, name: str, where: str) -> tuple[str, torch.Tensor]:
        """Finds a parameter named by another library (from the model root, or from the backbone root).

        Returns:
            The key polyglot-adapters stores it under (backbone-relative where possible) and the tensor.

        Raises:
            ConversionError: If the base model has no such parameter.
        """
        for full in (name, self.root + name):
            param = find_parameter(self.module, full)
            if param is not None:
                return (full[len(self.root) :] if full.startswith(self.root) else full), param
        raise ConversionError(f"{where}: parameter {name!r} is not in the base model; is --base the right model?")

    def blocks(self) -> list[str]:
        """Backbone-relative paths of the blocks, in order."""
        _, blocks = self.interface.find_blocks(self.module)
        return [path[len(self.root) :] for path, _ in blocks]


def _unique_suffix(path: str, keys: Iterable[str], where: str) -> str:
    matches = [k for k in keys if path == k or path.endswith(f".{k}")]
    if len(matches) != 1:
        raise ConversionError(
            f"{where}: module {path!r} matches {len(matches)} linear layers of the base model; "
            "is --base the model this checkpoint was trained on?"
        )
    return matches[0]


def find_parameter(module: nn.Module, path: str) -> torch.Tensor | None:
    """The parameter at ``path`` (``a.b.weight``), seeing through adapter wrappers; ``None`` if absent."""
    parent, _, attr = path.rpartition(".")
    try:
        owner = unwrap(module.get_submodule(parent)) if parent else module
    except AttributeError:
        return None
    return owner._parameters.get(attr) if attr else None


def resolve_host(host: nn.Module, interface: HostInterface | str | None = None) -> Host:
    """Describes a host (a plain model or an :class:`AdaptedModel`) for the converters."""
    if isinstance(host, AdaptedModel):
        module, found, fp = host.model, host.interface, host.base_fingerprint
    else:
        module, found = host, find_interface(host, interface)
        fp = fingerprint(module, found)
    root, _ = found.find_blocks(module)
    linears = {p[len(root) :]: m for p, m in base_linears(module).items() if p.startswith(root)}
    return Host(module=module, interface=found, fingerprint=fp, root=root, linears=linears)


def host_from_config(directory: str | os.PathLike[str]) -> nn.Module:
    """Builds a local transformers checkpoint's architecture on the meta device (no weights read).

    Names, shapes and the fingerprint are all a conversion needs. The class is the first of the
    config's ``architectures`` (e.g. ``BertForMaskedLM``), else the backbone (``AutoModel``).

    Raises:
        ConversionError: If the directory has no readable ``config.json``.
    """
    import transformers

    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise ConversionError(f"{directory}: no config.json; --base must be a local transformers model directory")
    try:
        config = transformers.AutoConfig.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        raise ConversionError(f"{directory}: config.json cannot be read by transformers ({err})") from None
    names = getattr(config, "architectures", None) or []
    cls = getattr(transformers, names[0], None) if names else None
    with torch.device("meta"):
        if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
            return cls(config).eval()
        return transformers.AutoModel.from_config(config).eval()
