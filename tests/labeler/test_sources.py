import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from labeler.errors import InputError
from labeler.io import redact, redact_text
from labeler.sources import resolve_input


def _touch(p):
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"x")
    return p


def test_directory_is_recursive_sorted_with_relative_ids(tmp_path):
    _touch(tmp_path / "b" / "two.flac")
    _touch(tmp_path / "a.wav")
    _touch(tmp_path / "notes.txt")
    t = resolve_input(str(tmp_path))
    assert t.column("utt_id").to_pylist() == ["a", "b/two"]
    assert t.column("uri").to_pylist() == [str(tmp_path / "a.wav"), str(tmp_path / "b" / "two.flac")]


def test_glob(tmp_path):
    _touch(tmp_path / "s1" / "x.wav")
    _touch(tmp_path / "s2" / "y.wav")
    _touch(tmp_path / "s2" / "z.mp3")
    t = resolve_input(str(tmp_path / "*" / "*.wav"))
    assert t.column("utt_id").to_pylist() == ["s1/x", "s2/y"]


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_manifests(tmp_path, fmt):
    rows = [{"uri": "clips/a.wav", "utt_id": "u1"}, {"uri": str(tmp_path / "b.wav"), "utt_id": None}]
    path = tmp_path / f"m.{fmt}"
    if fmt == "csv":
        path.write_text("uri,utt_id\nclips/a.wav,u1\n" + f"{tmp_path / 'b.wav'},\n")
    elif fmt == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    t = resolve_input(str(path))
    assert t.column("uri").to_pylist() == [str(tmp_path / "clips" / "a.wav"), str(tmp_path / "b.wav")]
    assert t.column("utt_id").to_pylist() == ["u1", str(tmp_path / "b.wav")]
    assert t.column("error").null_count == 2


def test_duplicates_become_error_rows_with_unique_ids(tmp_path):
    m = tmp_path / "m.csv"
    m.write_text("uri,utt_id\n/a.wav,a\n/a.wav,a2\n/b.wav,a\n/a.wav,\n")
    t = resolve_input(str(m))
    ids = t.column("utt_id").to_pylist()
    errs = t.column("error").to_pylist()
    assert t.num_rows == 4 and len(set(ids)) == 4
    assert errs[0] is None
    assert "same uri" in errs[1] and "duplicate utt_id" in errs[2] and "same uri" in errs[3]
    assert ids[2] == "a#dup1"


@pytest.mark.parametrize(
    "content, match",
    [("path,id\n/a.wav,1\n", "no 'uri' column"), ("uri\n", "no rows"), ('uri,utt_id\n"/a.wav\n', "malformed manifest"), ("uri,utt_id\n,x\n", "uri is empty")],
    ids=["no-uri-column", "empty", "broken-csv", "empty-uri"],
)
def test_malformed_manifests(tmp_path, content, match):
    m = tmp_path / "m.csv"
    m.write_text(content)
    with pytest.raises(InputError, match=match):
        resolve_input(str(m))


def test_missing_and_empty_inputs(tmp_path):
    with pytest.raises(InputError, match="not found"):
        resolve_input(str(tmp_path / "nope"))
    with pytest.raises(InputError, match="no audio files"):
        resolve_input(str(tmp_path))
    with pytest.raises(InputError, match="no files match"):
        resolve_input(str(tmp_path / "*.wav"))


def test_redaction():
    assert redact("s3://AKIA:SECRET@bucket/x.wav") == "s3://***@bucket/x.wav"
    assert redact("https://h/x.wav?X-Amz-Signature=abc") == "https://h/x.wav?***"
    assert redact("/local/path.wav") == "/local/path.wav"
    assert "SECRET" not in redact_text("cannot read s3://AKIA:SECRET@bucket/x.wav: denied")
