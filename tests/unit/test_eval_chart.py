"""The LLaVA-Bench chart draws whatever the interval is, even one that misses the point estimate."""

from __future__ import annotations

from pathlib import Path

from llava_lite.evaluation.llava_bench import BenchResult, write_chart


def test_chart_of_a_one_question_category(tmp_path: Path) -> None:
    # One question: every bootstrap draw is the same, and the float32 point estimate sits just
    # outside the interval rounded to 3 decimals; matplotlib refuses negative error bars.
    scores = {
        "conversation": {"relative": 93.33333587646484, "ci95": [93.333, 93.333], "count": 1},
        "all": {"relative": 61.0, "ci95": [55.5, 70.25], "count": 4},
    }
    result = BenchResult(scores=scores, judge={"model": "m", "prompt_version": "v1"})
    write_chart(result, tmp_path / "chart.png")
    assert (tmp_path / "chart.png").stat().st_size > 1000
