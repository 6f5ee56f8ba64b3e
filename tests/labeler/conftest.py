"""Fixtures shared by the labeler tests."""

import pytest


@pytest.fixture(scope="session")
def emotion_run(tmp_path_factory):
    """The espeak-ng emotion sentences, a silent clip and a corrupt file, labeled once per
    session through the CLI with demo.yaml (tests/emotion_sentences.py); (d, clips, out, gold,
    run_id). Tests that write to ``out`` or move ``clips`` work on a copy or restore them."""
    from emotion_sentences import label_sentences

    return label_sentences(tmp_path_factory.mktemp("emotion"))
