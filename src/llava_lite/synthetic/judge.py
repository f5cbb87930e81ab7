"""An offline answer judge for the synthetic world: the annotations, read through the checker.

It stands where Claude judges answers for preference pairs (same interface as
:class:`~llava_lite.evaluation.answer_judge.ClaudeAnswerJudge`), for the demo and the tests:
free, no network, and exact for this world. Each answer's claims are checked against the
image's ground truth (:func:`~llava_lite.synthetic.checker.check_turns`: colours, shapes,
counts, positions, objects that are not there); the score is ``1 + 9 * right / checked``
and the reason lists what was wrong. An answer with no claim the checker can read is a
counted ``nothing_checked`` failure, never a score.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from llava_lite.evaluation.answer_judge import AnswerJudgement, AnswerRequest
from llava_lite.synthetic.checker import check_turns
from llava_lite.synthetic.questions import DETAIL_INSTRUCTIONS
from llava_lite.synthetic.scene import Scene
from llava_lite.synthetic.world import SPLITS, WorldPaths, load_scenes

OFFLINE_MODEL = "offline-checker"
OFFLINE_PROMPT_VERSION = "checker-v1"


class OfflineJudge:
    """Scores answers about a built world's images from their annotations (``scenes`` by the
    image's ``file_name``, relative to the world's image root)."""

    model = OFFLINE_MODEL
    prompt_version = OFFLINE_PROMPT_VERSION
    needs_context = False

    def __init__(self, world: str | Path | None = None, scenes: Mapping[str, Scene] | None = None) -> None:
        """``world``: a folder :func:`~llava_lite.synthetic.world.build_world` wrote (every split
        is read), or ``scenes`` given directly; one of the two."""
        if (world is None) == (scenes is None):
            raise ValueError("OfflineJudge needs world (a built world's folder) or scenes, not both")
        self.scenes = dict(scenes) if scenes is not None else scenes_by_file(WorldPaths(Path(world)))

    def __repr__(self) -> str:
        return f"OfflineJudge({len(self.scenes)} images)"

    def score(self, request: AnswerRequest) -> AnswerJudgement:
        scene = self.scenes.get(request.image)
        if scene is None:
            return AnswerJudgement(
                request, None, error="unknown_image", reason=f"{request.image} not in the world"
            )
        described = request.question.split("\n")[0].strip() in DETAIL_INSTRUCTIONS
        result = check_turns([(request.question, request.answer)], scene, description=described)
        if result.checked == 0:
            return AnswerJudgement(
                request, None, error="nothing_checked", reason="no claim the checker reads"
            )
        right = result.checked - len(result.problems)
        reason = f"{right}/{result.checked} claims right"
        if result.problems:
            reason += "; " + "; ".join(result.problems)
        return AnswerJudgement(request, round(1.0 + 9.0 * right / result.checked, 3), reason=reason)

    async def judge(self, request: AnswerRequest, semaphore: Any = None) -> AnswerJudgement:
        """The interface the pairs run calls (nothing to wait for: no network)."""
        return self.score(request)


def scenes_by_file(paths: WorldPaths, splits: Iterable[str] = SPLITS) -> dict[str, Scene]:
    """Every scene of ``splits`` keyed by its image's ``file_name`` (as questions name images)."""
    return {
        WorldPaths.file_name(split, scene.image_id): scene
        for split in splits
        if paths.instances(split).is_file()
        for scene in load_scenes(paths, split)
    }
