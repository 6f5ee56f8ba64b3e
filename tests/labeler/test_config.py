import pytest

from labeler.config import LabelConfig, load_config, parse_override
from labeler.errors import ConfigError


def test_defaults_fit_two_cores():
    cfg = LabelConfig()
    reserved = cfg.decode.num_cpus + cfg.asr.num_cpus + cfg.scorer.num_cpus + cfg.out.write_num_cpus
    assert reserved <= 2.0, "default pools must leave room for one another on a 2-core machine"


def test_overrides_and_yaml_values(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("asr:\n  beam_size: 3\nscorer:\n  backend: embedding\n")
    cfg = load_config(str(p), dict([parse_override("asr.beam_size=1"), parse_override("asr.concurrency=[1, 4]"), parse_override("input=x")]))
    assert cfg.asr.beam_size == 1 and cfg.asr.concurrency == (1, 4) and cfg.scorer.backend == "embedding" and cfg.input == "x"


def test_all_problems_reported_at_once():
    with pytest.raises(ConfigError) as exc:
        load_config(None, {"asr.beam_size": 0, "asr.typo": 1, "scorer.backend": "magic"})
    msg = str(exc.value)
    assert "asr.beam_size" in msg and "asr.typo: unknown field" in msg and "scorer.backend" in msg


def test_asr_cache_key_ignores_resources():
    a, b = LabelConfig(), LabelConfig()
    b.asr.num_cpus = 4
    b.asr.batch_size = 32
    assert a.asr.config_hash() == b.asr.config_hash()
    b.asr.beam_size = 1
    assert a.asr.config_hash() != b.asr.config_hash()


def test_missing_io_is_a_clear_error():
    with pytest.raises(ConfigError, match="input and --output"):
        LabelConfig().require_io()


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("asr.beam_size")
