import numpy as np
import pytest

from fixtures import load_sample, resample, write_audio
from labeler.audio import SAMPLE_RATE, AudioError, decode, load


@pytest.mark.parametrize("suffix, rate, channels", [(".wav", 8000, 1), (".flac", 22050, 1), (".mp3", 44100, 2), (".m4a", 48000, 2), (".ogg", 48000, 1)])
def test_any_container_rate_and_layout_becomes_16k_mono(tmp_path, suffix, rate, channels):
    speech = load_sample("happy")
    src = resample(speech, SAMPLE_RATE, rate)
    path = write_audio(tmp_path / f"x{suffix}", src, rate, channels)
    audio, sha = load(str(path))
    assert audio.sample_rate == SAMPLE_RATE and audio.waveform.ndim == 1 and audio.waveform.dtype == np.float32
    assert audio.source_sample_rate == rate and audio.source_channels == channels
    assert abs(audio.duration_s - len(speech) / SAMPLE_RATE) < 0.15
    assert len(sha) == 64
    # same speech, so similar energy after the round trip
    assert 0.3 < np.sqrt(np.mean(audio.waveform**2)) / np.sqrt(np.mean(speech**2)) < 3


def test_bad_files(tmp_path):
    with pytest.raises(AudioError, match="empty file"):
        decode(b"")
    with pytest.raises(AudioError, match="not a readable audio file|no audio stream|corrupt"):
        decode(b"this is a text file, not audio\n" * 20)
    with pytest.raises(AudioError, match="file not found"):
        load(str(tmp_path / "missing.wav"))
