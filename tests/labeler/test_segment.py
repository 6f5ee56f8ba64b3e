"""Issue 12, the pure logic: utterances rebuilt from a word stream (labeler/segment.py), and a
resumed run's handling of a recording whose utterances were staged only in part."""

import pyarrow as pa
import pytest

from labeler import schema as S
from labeler.config import SegmentConfig
from labeler.segment import Word, build_utterances, compression_ratio, longest_repeat, utterance_id


def sentence(text: str, start: float, word_s: float = 0.35, gap_s: float = 0.05, prob: float = 0.9) -> list[Word]:
    """A sentence's words, evenly timed from ``start``."""
    out, t = [], start
    for w in text.split():
        out.append(Word(t, t + word_s, " " + w, prob))
        t += word_s + gap_s
    return out


def test_long_pauses_split_and_sentences_stay_whole():
    cfg = SegmentConfig()
    a = sentence("I cannot believe you did this to me again.", 1.0)  # 9 words, 3.6 s
    b = sentence("Please leave the room right now.", a[-1].end + 1.2)
    c = sentence("We will talk about it tomorrow morning.", b[-1].end + 0.9)
    kept, dropped = build_utterances(a + b + c, duration=c[-1].end + 1.0, cfg=cfg)
    assert [u.text for u in kept] == ["I cannot believe you did this to me again.", "Please leave the room right now.",
                                      "We will talk about it tomorrow morning."]
    assert not dropped
    for u, words in zip(kept, (a, b, c)):  # padded, never past the midpoint to a neighbour
        assert u.start == pytest.approx(words[0].start - cfg.pad_s) and u.end == pytest.approx(words[-1].end + cfg.pad_s)
    assert kept[0].end <= kept[1].start


def test_sentence_end_splits_once_long_enough_and_short_pieces_merge():
    cfg = SegmentConfig()
    # no pause long enough to split: sentence ends decide (the first is long enough, 3.2 s)
    a = sentence("This is the first sentence of the day.", 0.5)
    b = sentence("Okay.", a[-1].end + 0.3)  # 0.35 s: too short alone, joins a neighbour
    c = sentence("And this is the second one, much calmer now.", b[-1].end + 0.3)
    kept, _ = build_utterances(a + b + c, duration=20.0, cfg=cfg)
    assert len(kept) == 2
    assert kept[0].text == "This is the first sentence of the day."
    assert kept[1].text.startswith("Okay.") and kept[1].text.endswith("calmer now.")


def test_never_longer_than_max_s_split_at_the_largest_pause():
    cfg = SegmentConfig(max_s=8.0, target_max_s=8.0)
    words, t = [], 0.0
    for k in range(30):  # 30 words without punctuation, one 0.5-s pause in the middle
        words.append(Word(t, t + 0.3, f" w{k}", 0.9))
        t += 0.3 + (0.5 if k == 14 else 0.05)
    kept, _ = build_utterances(words, duration=t + 1, cfg=cfg)
    assert all(u.duration <= cfg.max_s + 2 * cfg.pad_s for u in kept)
    assert [len(u.words) for u in kept] == [15, 15]  # the cut is at the pause


def test_word_durations_are_capped():
    cfg = SegmentConfig(max_word_s=1.0)
    words = sentence("Hello there my good friend how are you.", 0.0)
    words[-1] = Word(words[-1].start, words[-1].start + 9.0, words[-1].text, 0.9)  # stretched into silence
    kept, _ = build_utterances(words, duration=30.0, cfg=cfg)
    assert kept[0].end == pytest.approx(words[-1].start + 1.0 + cfg.pad_s)


@pytest.mark.parametrize("text, reason", [
    ("Thanks for watching!", "stock_phrase"),
    ("the the the the the the the the", "repetition"),
    ("no no no no no no", "repetition"),
    ("Hiiiiii.", "too_few_words"),
])
def test_junk_is_dropped_and_counted(text, reason):
    kept, dropped = build_utterances(sentence(text, 2.0, word_s=0.4 if " " in text else 1.6), duration=20.0, cfg=SegmentConfig())
    assert not kept and dropped == {reason: 1}


def test_whisper_no_speech_rule_and_implausible_rate():
    cfg = SegmentConfig()
    silent = [Word(w.start, w.end, w.text, 0.1, no_speech_prob=0.9) for w in sentence("I think that is what they said.", 1.0)]
    assert build_utterances(silent, 20.0, cfg)[1] == {"no_speech": 1}
    fast = [Word(1.0 + 0.02 * k, 1.0 + 0.02 * k + 0.02, " extraordinarily", 0.9) for k in range(2)]
    fast += sentence("and then many more words follow here", 1.05, word_s=0.01, gap_s=0.0)
    assert build_utterances(fast, 20.0, cfg)[1]["implausible_rate"] == 1


def test_too_short_alone_is_dropped():
    cfg = SegmentConfig()
    a = sentence("Yes I know.", 1.0)  # 1.15 s, 3 s from anything else
    b = sentence("That was a very long and tiring day for all of us.", a[-1].end + 3.0)
    kept, dropped = build_utterances(a + b, duration=30.0, cfg=cfg)
    assert [u.text for u in kept] == ["That was a very long and tiring day for all of us."] and dropped == {"too_short": 1}


def test_helpers():
    assert longest_repeat("a b a b a b c".split()) == 3 and longest_repeat("one two three".split()) == 1
    assert compression_ratio("ha " * 40) > 2.4 > compression_ratio("The quick brown fox jumps over the lazy dog.")
    assert utterance_id("calls/0001", 12.3456, 17.0) == "calls/0001@12346-17000"
    assert build_utterances([], 10.0, SegmentConfig()) == ([], {})


def test_config_checks_lengths_and_modes():
    from labeler.config import ConfigError, LabelConfig, build_config

    with pytest.raises(ConfigError, match="min_s <= target_min_s"):
        build_config({"segment": {"min_s": 5.0, "target_min_s": 3.0}})
    cfg = SegmentConfig()
    assert not cfg.applies(19.0) and cfg.applies(21.0)
    assert SegmentConfig(mode="always").applies(2.0) and not SegmentConfig(mode="off").applies(3600.0)
    assert build_config({"segment": {"mode": False}}).segment.mode == "off"  # YAML's bare `off`
    # a segmentation setting changes the segmented transcripts' key, not the whole-file one
    a, b = LabelConfig(), LabelConfig(segment={"pad_s": 0.3})
    assert a.asr.config_hash() == b.asr.config_hash() and a.segmented_hash() != b.segmented_hash()


# -- a resumed run and a recording staged in part ------------------------------------------


def _part_rows(source: str, n: int, start: int = 0) -> pa.Table:
    """Labels rows of utterances ``start..`` of a file that gives ``n`` in all."""
    import datetime as dt

    k = list(range(start, n))
    rows = {f.name: [None] * len(k) for f in S.LABELS_FILE_SCHEMA}
    rows.update(utt_id=[utterance_id(source, i, i + 1) for i in k], uri=[f"{source}.wav"] * len(k), source_id=[source] * len(k),
                segment_index=k, start_s=[float(i) for i in k], end_s=[i + 1.0 for i in k], duration_s=[float(n)] * len(k),
                status=["labeled"] * len(k), created_at=[dt.datetime.now(dt.timezone.utc)] * len(k))
    return S.conform(pa.table(rows), S.LABELS_FILE_SCHEMA).append_column("source_utterances", pa.array([n] * len(k), pa.int32()))


def test_resume_drops_a_recording_staged_in_part_and_commit_refuses_one(tmp_path):
    from labeler.errors import CommitError
    from labeler.runs import commit, remaining
    from labeler.sink import segmented_sources, summarize_rows, write_part
    from labeler.taxonomy import load_taxonomy

    root, run = str(tmp_path), "r1"
    labels = f"{S.staging_dir(root, run)}/labels"
    # "a" is whole in part 0; "b" has utterances 0-1 in part 0 and would have 2-3 in a part never written
    p0 = pa.concat_tables([_part_rows("a", 3), _part_rows("b", 4).slice(0, 2)])
    write_part(labels, "part-x-00000.parquet", p0.drop_columns("source_utterances"), summarize_rows(p0, segmented_sources(p0)), "zstd")
    inputs = pa.table({"utt_id": ["a", "b", "c"], "uri": ["a.wav", "b.wav", "c.wav"]})
    tax = load_taxonomy("ekman")
    with pytest.raises(CommitError, match="1 cut short"):
        commit(root, run, tax, "k", 3, {"counts": {}})
    todo, skipped = remaining(inputs, root, run)
    assert todo.column("utt_id").to_pylist() == ["b", "c"] and skipped == 1
    import pyarrow.parquet as pq

    kept = pq.read_table(f"{labels}/part-x-00000.parquet")
    assert kept.column("source_id").to_pylist() == ["a"] * 3  # b's partial rows are gone, a's stay
    assert summarize_rows(kept)["rows"] == 3
    # the resumed attempt writes b whole (and c): the commit then finds every file complete
    p1 = pa.concat_tables([_part_rows("b", 4), _part_rows("c", 1)])
    write_part(labels, "part-y-00000.parquet", p1.drop_columns("source_utterances"), summarize_rows(p1, segmented_sources(p1)), "zstd")
    m = commit(root, run, tax, "k", 3, {"counts": {}})
    assert m["counts"]["sources"] == 3 and m["counts"]["output_rows"] == 8 and m["counts"]["segmented_sources"] == 2
