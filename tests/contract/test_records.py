"""The one reader of uploaded JSONL and CSV files: records with the line users see in an editor."""

from __future__ import annotations

import io

import pytest

from tunery_contract.records import RecordFormatError, detect_format, iter_records, read_records


def records(data: bytes, fmt: str) -> list[tuple[int, dict]]:
    return list(iter_records(io.BytesIO(data), fmt))


def test_jsonl_lines_are_numbered_from_one_and_blank_lines_skipped():
    data = b'{"text": "a", "label": "x"}\n\n{"text": "b", "label": "y"}\n'
    assert records(data, "jsonl") == [(1, {"text": "a", "label": "x"}), (3, {"text": "b", "label": "y"})]


def test_csv_rows_carry_their_file_line_with_the_header_as_line_one():
    data = b'text,label\n"hello, there",greeting\n\n"two\nlines",refund\n'
    got = records(data, "csv")
    assert [line for line, _ in got] == [2, 5]
    assert got[0][1] == {"text": "hello, there", "label": "greeting"}
    assert got[1][1]["text"] == "two\nlines"


@pytest.mark.parametrize(
    ("data", "fmt", "line", "fragment"),
    [
        (b'{"text": "ok"}\n{"text": oops}\n', "jsonl", 2, "invalid JSON"),
        (b'{"text": "ok"}\n[1, 2]\n', "jsonl", 2, "expected a JSON object"),
        (b"text,label\na,b,c\n", "csv", 2, "expected 2 fields, found 3"),
        (b"text,text\na,b\n", "csv", 1, "duplicate CSV columns: text"),
        (b",\na,b\n", "csv", 1, "header is empty"),
    ],
)
def test_malformed_input_names_the_line(data, fmt, line, fragment):
    with pytest.raises(RecordFormatError) as caught:
        records(data, fmt)
    assert caught.value.line == line
    assert fragment in str(caught.value)


def test_invalid_utf8_is_a_format_error_not_a_crash():
    with pytest.raises(RecordFormatError, match="not valid UTF-8"):
        records(b'{"text": "caf\xe9"}\n', "jsonl")


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="unknown format"):
        records(b"", "xml")


def test_format_detection_and_reading_from_a_path(tmp_path):
    assert detect_format("Data.CSV") == "csv"
    assert detect_format("train.jsonl") == "jsonl"
    path = tmp_path / "rows.csv"
    path.write_text("text,label\nhi,greeting\n", encoding="utf-8")
    assert read_records(path) == [(2, {"text": "hi", "label": "greeting"})]
