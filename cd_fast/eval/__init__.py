"""Evaluation: grading (grade.py: math-verify, and general-domain graders chosen per record);
batched generation, the papers' metrics and the resumable run folder (`EvalRun`, run.py)."""

from cd_fast.eval.grade import final_answer_text, grade, grade_record
from cd_fast.eval.run import EvalConfig, compare_table, evaluate, metrics, ratios

__all__ = [
    "EvalConfig",
    "compare_table",
    "evaluate",
    "final_answer_text",
    "grade",
    "grade_record",
    "metrics",
    "ratios",
]
