"""Preference pairs with AI feedback, for DPO: the stage-2 model samples answers, a judge scores them.

Modules: ``pairs`` (the resumable run: candidates, judgements, pairs; :func:`make_pairs`) and
``settings`` (what ``llava-lite-pairs`` reads, ``conf/pairs.yaml``). The judges live with the
others: Claude's in :mod:`llava_lite.evaluation.answer_judge`, the synthetic world's offline one
in ``llava_lite.synthetic.judge``, chosen in config by ``_target_`` (``conf/judge/``).
"""

from llava_lite.preference.pairs import PairsSummary, choose_pair, make_pairs

__all__ = ["PairsSummary", "choose_pair", "make_pairs"]
