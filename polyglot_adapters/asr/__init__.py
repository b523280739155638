"""Streaming multilingual speech recognition: features, a chunk-causal Conformer transducer, decoding, data.

``conformer_transducer(*, input_dim, num_symbols, ...)`` and its presets build the model;
``AdaptedModel(model)`` finds the ``conformer-transducer`` host preset, so language-dependent
bottleneck or LoRA adapters attach to its encoder layers and ``Route`` picks one per stream.
"""

from __future__ import annotations

from .audio import SAMPLE_RATE, AudioError, check_waveform, read_audio, write_audio
from .data import ESPEAK_VOICES, Utterance, build_speech_corpus, espeak_available, read_manifest, synthesize
from .decoding import (
    DecoderState,
    beam_search,
    beam_search_encodings,
    greedy_search,
    init_decoder_state,
    stack_decoder_states,
    unstack_decoder_states,
)
from .features import LogMel, StreamingLogMel, spec_augment
from .model import (
    ChunkedConformerEncoder,
    ConformerTransducer,
    ConformerTransducerConfig,
    Joiner,
    Predictor,
    conformer_transducer,
    conformer_transducer_small,
    conformer_transducer_tiny,
    stack_states,
    unstack_states,
)
from .tokenizer import SpeechTokenizer, normalize_transcript, train_tokenizer
from .training import (
    SpeechExample,
    collate_speech,
    decode_encodings,
    error_rates,
    evaluate,
    feature_stats,
    load_examples,
    load_transducer,
    pseudo_label,
    save_transducer,
    train_transducer,
    transducer_loss,
)

__all__ = [
    "ESPEAK_VOICES",
    "SAMPLE_RATE",
    "AudioError",
    "ChunkedConformerEncoder",
    "ConformerTransducer",
    "ConformerTransducerConfig",
    "DecoderState",
    "Joiner",
    "LogMel",
    "Predictor",
    "SpeechExample",
    "SpeechTokenizer",
    "StreamingLogMel",
    "Utterance",
    "beam_search",
    "beam_search_encodings",
    "build_speech_corpus",
    "check_waveform",
    "collate_speech",
    "conformer_transducer",
    "conformer_transducer_small",
    "conformer_transducer_tiny",
    "decode_encodings",
    "error_rates",
    "espeak_available",
    "evaluate",
    "feature_stats",
    "greedy_search",
    "init_decoder_state",
    "load_examples",
    "load_transducer",
    "normalize_transcript",
    "pseudo_label",
    "read_audio",
    "read_manifest",
    "save_transducer",
    "spec_augment",
    "stack_decoder_states",
    "stack_states",
    "synthesize",
    "train_tokenizer",
    "train_transducer",
    "transducer_loss",
    "unstack_decoder_states",
    "unstack_states",
    "write_audio",
]
