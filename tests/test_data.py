"""Trace I/O: layouts on real and synthetic files, mapping, joining, errors, atomic writes."""

import gzip
import json
import tracemalloc

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cd_fast.data import (
    AtomicWriter,
    DataError,
    Trace,
    TraceReader,
    parse_fields,
    read_traces,
    write_jsonl,
)
from cd_fast.formats import split_completion


def write_lines(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_gsm8k_layout(shared_data):
    reader = TraceReader(shared_data / "gsm8k" / "test.jsonl")
    first = next(iter(reader))
    assert reader.layout == "gsm8k"
    assert first.question.startswith("Janet")
    assert first.gold == first.answer == "18"
    assert "<<" not in first.trace and "####" not in first.trace
    assert first.trace.startswith("Janet sells 16 - 3 - 4 = 9 duck eggs a day.")


def test_math500_layout(shared_data):
    records = list(read_traces(shared_data / "math500" / "test.jsonl"))
    assert len(records) == 500
    first = records[0]
    assert first.id == "test/precalculus/807.json"
    assert first.trace.startswith("We have that $r = ")
    assert first.gold == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert first.meta["level"] == 2


def test_join_prompts_to_real_traces(shared_data):
    folder = shared_data / "qwen3-8b-thinking"
    reader = TraceReader(folder / "qwen3-8b__think-on.jsonl", prompts=folder / "items.json")
    records = list(reader)
    assert reader.layout == "reasoning" and len(records) == 200
    first = records[0]
    assert first.id == "arith-00-0"
    assert first.question.startswith("A warehouse holds 43 crates.")
    assert first.trace.startswith("Okay, let's see.")
    assert first.answer.endswith("Answer: 670") and first.gold == "670"
    assert first.meta["done_reason"] == "stop" and first.meta["type"] == "arith"
    cut_off = [r for r in records if r.meta["done_reason"] == "length"]
    assert len(cut_off) == 11


def test_join_errors_name_the_key(tmp_path):
    prompts = tmp_path / "items.json"
    prompts.write_text(json.dumps([{"id": "a", "prompt": "Q?"}]))
    traces = write_lines(
        tmp_path / "t.jsonl",
        [{"item_id": "a", "thinking": "t", "content": "c"}, {"item_id": "zz", "thinking": "t"}],
    )
    with pytest.raises(DataError, match=r"t.jsonl:line 2: field 'item_id': no record with id='zz'"):
        list(TraceReader(traces, prompts=prompts))
    duplicate = tmp_path / "dup.json"
    duplicate.write_text(json.dumps([{"id": "a"}, {"id": "a"}]))
    with pytest.raises(DataError, match=r"dup.json:item 2: field 'id': duplicate join key"):
        list(TraceReader(traces, prompts=duplicate))


def test_think_completion_layout(tmp_path):
    path = write_lines(
        tmp_path / "c.jsonl",
        [
            {
                "prompt": "1+1?",
                "completion": "<think>\nadd them\n</think>\n\nIt is 2.",
                "answer": 2,
            },
            {"prompt": "2+2?", "completion": "add them again</think>4"},  # Qwen: no opening tag
            {"prompt": "3+3?", "completion": "<think>cut off by the length lim"},
        ],
    )
    reader = TraceReader(path)
    a, b, c = reader
    assert reader.layout == "think"
    assert (a.trace, a.answer, a.gold) == ("add them", "It is 2.", "2")
    assert (b.trace, b.answer) == ("add them again", "4")
    assert (c.trace, c.answer) == ("cut off by the length lim", None)
    assert a.id == "c:1" and c.id == "c:3"


def test_messages_layout(tmp_path):
    path = write_lines(
        tmp_path / "m.jsonl",
        [
            {
                "id": 7,
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": "What is 2*3?"},
                    {"role": "assistant", "content": "<think>2*3=6</think>\n6"},
                ],
            },
            {
                "id": 8,
                "messages": [
                    {"role": "user", "content": "What is 2*4?"},
                    {"role": "assistant", "content": "8", "reasoning_content": "2*4=8"},
                ],
            },
            {"id": 9, "messages": [{"role": "user", "content": "hi"}]},
        ],
    )
    reader = TraceReader(path, skip_invalid=True)
    records = list(reader)
    assert reader.layout == "messages"
    assert [(r.id, r.question, r.trace, r.answer) for r in records] == [
        ("7", "What is 2*3?", "2*3=6", "6"),
        ("8", "What is 2*4?", "2*4=8", "8"),
    ]
    assert [(s.location, s.id) for s in reader.skipped] == [("line 3", "9")]
    assert "no assistant message" in reader.skipped[0].reason


def test_explicit_mapping_with_nested_fields(tmp_path):
    path = write_lines(
        tmp_path / "x.jsonl",
        [{"key": "k1", "q": {"text": "Why?"}, "cot": "Because.", "final": "yes", "extra": 1}],
    )
    fields = parse_fields(["id=key", "question=q.text", "trace=cot", "answer=final"])
    (record,) = TraceReader(path, fields=fields)
    assert (record.id, record.question, record.trace, record.answer) == (
        "k1",
        "Why?",
        "Because.",
        "yes",
    )
    assert record.meta == {"extra": 1}
    with pytest.raises(ValueError, match="TARGET=SOURCE"):
        parse_fields(["question"])
    with pytest.raises(ValueError, match="TARGET one of"):
        parse_fields(["bogus=x"])


def test_undetectable_layout_says_how_to_map(tmp_path):
    path = write_lines(tmp_path / "u.jsonl", [{"foo": "bar"}])
    with pytest.raises(DataError, match=r"u.jsonl:line 1: cannot detect the layout \(keys: foo\)"):
        list(TraceReader(path))


def test_errors_name_file_line_and_field(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(
        b'{"id": "a", "question": "q", "trace": "t"}\n'
        b"\n"
        b'{"id": "b", "question": "q", "trace": 5}\n'
        b"{not json\n"
        b'{"id": "d", "question": "q", "trace": "\xff"}\n'
        b'{"id": "e", "question": "q", "trace": "t", "meta": []}\n'
        b'{"id": "f", "question": "q", "trace": "t"}\n'
    )
    with pytest.raises(DataError) as error:
        list(TraceReader(path))
    assert str(error.value) == f"{path}:line 3: field 'trace': expected a string, got a number"
    reader = TraceReader(path, skip_invalid=True)
    assert [r.id for r in reader] == ["a", "f"]
    assert [(s.location, s.id) for s in reader.skipped] == [
        ("line 3", "b"),
        ("line 4", None),
        ("line 5", None),
        ("line 6", "e"),
    ]
    assert "invalid JSON" in reader.skipped[1].reason
    steps = tmp_path / "steps.jsonl"
    steps.write_text(
        '{"id": "s", "question": "q", "trace": "one. two.", "steps": [[0, 5], [5, 40]]}\n'
    )
    with pytest.raises(
        DataError,
        match=r"steps.jsonl:line 1: field 'steps': expected \[start, end\] pairs inside the "
        r"trace \(9 characters\)",
    ):
        list(TraceReader(steps))
    assert "not UTF-8" in reader.skipped[2].reason
    assert reader.skipped[3].reason == "field 'meta': expected an object, got a list"


def test_native_roundtrip_gzip_and_parquet(tmp_path):
    records = [
        Trace(
            id=f"r{i}",
            question=f"q{i}",
            trace=f"step one. step two {i}.",
            answer="a",
            gold=None,
            meta={"n": i},
            steps=[[0, 10], [10, 20]],
        )
        for i in range(5)
    ]
    assert write_jsonl(tmp_path / "out.jsonl", records) == 5
    assert list(read_traces(tmp_path / "out.jsonl")) == records
    with gzip.open(tmp_path / "out.jsonl.gz", "wt", encoding="utf-8") as handle:
        handle.write((tmp_path / "out.jsonl").read_text())
    assert list(read_traces(tmp_path / "out.jsonl.gz")) == records
    table = pa.Table.from_pylist([{**r.to_dict(), "meta": json.dumps(r.meta)} for r in records])
    pq.write_table(table, tmp_path / "out.parquet")
    reader = TraceReader(tmp_path / "out.parquet")
    assert list(reader) == records
    assert (reader.count_hint(), reader.records_read) == (5, 5)


def test_jsonl_streams_in_constant_memory(tmp_path):
    path = write_lines(
        tmp_path / "big.jsonl",
        [{"id": str(i), "question": "q", "trace": "t" * 1000} for i in range(2000)],
    )
    reader = TraceReader(path)
    assert reader.count_hint() == 2000  # lines counted without parsing
    iterator = iter(reader)
    tracemalloc.start()
    next(iterator)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < path.stat().st_size / 10  # read one line, not the 2 MB file
    assert sum(1 for _ in iterator) == 1999 and reader.records_read == 2000


def test_split_completion():
    assert split_completion("  <think>a</think> b ") == ("a", "b")
    assert split_completion("a</think>") == ("a", None)
    assert split_completion("no tags") == ("no tags", None)


def test_atomic_writer_keeps_old_file_on_error(tmp_path):
    target = tmp_path / "out.jsonl"
    target.write_text("old\n")
    with pytest.raises(RuntimeError), AtomicWriter(target) as handle:
        handle.write("partial")
        raise RuntimeError("killed")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]
    with AtomicWriter(target) as handle:
        handle.write("new\n")
    assert target.read_text() == "new\n"
