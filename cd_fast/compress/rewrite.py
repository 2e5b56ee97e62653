"""The rewriting prompts: each level's packaged template (1 delete words, 2 concise, 3 draft)
or a user's file, filled with the question, the trace and the target length. The instruct model
answers them through the generation layer (`cd_fast.generate`)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def prompt_template(level: int, path: str | Path | None = None) -> str:
    """The packaged template of a level (1 delete words, 2 concise, 3 draft), or a user file."""
    if path is not None:
        text = Path(path).read_text(encoding="utf-8")
    else:
        text = (resources.files("cd_fast.compress") / "prompts" / f"level{level}.txt").read_text(
            encoding="utf-8"
        )
    if "{trace}" not in text:
        raise ValueError(f"{path or f'level{level}.txt'}: the prompt template needs {{trace}}")
    return text


def fill_template(template: str, question: str, trace: str, target_words: int) -> str:
    values = {"question": question, "trace": trace, "target_words": target_words}
    # str.replace, not str.format: traces are full of braces (LaTeX, code)
    for key, value in values.items():
        template = template.replace("{" + key + "}", str(value))
    return template
