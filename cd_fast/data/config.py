"""ReadConfig: how a command reads its input file (the "reading input" flags of segment, score,
compress, train and eval), and what of it a run's manifest records."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cd_fast.config import option
from cd_fast.data.readers import LAYOUTS, TraceReader, parse_fields
from cd_fast.data.record import Trace
from cd_fast.runtime import take

READING = "reading input"


@dataclass
class ReadConfig:
    """Reading options; CLI flags map one to one."""

    layout: str = option(
        "auto", choices=LAYOUTS, group=READING, help="Input record layout (auto: detected)."
    )
    field: tuple[str, ...] = option(
        (),
        metavar="TARGET=SOURCE",
        group=READING,
        help="Map a record field explicitly, e.g. --field question=prompt --field trace=thinking "
        "(targets: id, question, trace, answer, gold, completion); repeatable.",
    )
    prompts: str | None = option(
        None,
        group=READING,
        help="Prompts file to join onto the traces (e.g. items.json beside a traces JSONL).",
    )
    join: str | None = option(
        None,
        metavar="TRACE_KEY=PROMPT_KEY",
        group=READING,
        help="Join key for --prompts (default: item_id/prompt_id/question_id/problem_id/id = id).",
    )
    skip_invalid: bool = option(
        False,
        group=READING,
        help="Skip malformed records (counted and listed by id) instead of stopping at the first.",
    )
    limit: int | None = option(
        None, minimum=1, metavar="N", group=READING, help="Read only the first N records."
    )

    def __post_init__(self) -> None:
        self.field = tuple(self.field or ())
        parse_fields(list(self.field))  # one line for a malformed mapping, before any work

    def open(
        self, source: str | Path | TraceReader | Iterable[Any], need_traces: bool = True
    ) -> Iterable[Trace]:
        """The records of `source`: a file read with these options (a TraceReader; with
        `need_traces` False a file of bare questions reads too), a reader as it is, or Trace
        objects / dicts."""
        if isinstance(source, (str, Path)):
            return TraceReader(
                source,
                layout=self.layout,
                fields=parse_fields(list(self.field)),
                prompts=self.prompts,
                join=self.join,
                skip_invalid=self.skip_invalid,
                need_traces=need_traces,
            )
        if isinstance(source, TraceReader):
            return source
        return _as_traces(source)

    def records(self, opened: Iterable[Trace]) -> Iterator[Trace]:
        """The records a run takes from an opened source (the first --limit)."""
        return take(opened, self.limit)

    def result_options(self) -> dict[str, Any]:
        """What decides which records a run sees (a run manifest's options)."""
        return {
            "layout": self.layout,
            "field": list(self.field) or None,
            "join": self.join,
            "skip_invalid": self.skip_invalid,
            "limit": self.limit,
        }

    def inputs(self, source: Any, name: str = "input") -> dict[str, Path | None]:
        """The files a run reads `source` from (a run manifest fingerprints them): the source
        when it is a file, and the prompts file."""
        path, prompts = source, self.prompts
        if isinstance(source, TraceReader):
            path, prompts = source.source.path, source.prompts_path
        path = Path(path) if isinstance(path, (str, Path)) else None
        return {name: path, "prompts": Path(prompts) if prompts is not None else None}


def _as_traces(items: Iterable[Any]) -> Iterator[Trace]:
    for index, item in enumerate(items):
        if isinstance(item, Trace):
            yield item
        elif isinstance(item, Mapping):
            yield Trace.from_dict(dict(item), source="<data>", location=f"record {index}")
        else:
            raise TypeError(f"data[{index}]: expected a Trace or a dict, got {type(item)}")
