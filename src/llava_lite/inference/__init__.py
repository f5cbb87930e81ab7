"""Use a trained model: decoding settings, a multi-turn chat session, batch answers to question files.

Modules: ``decoding`` (:class:`DecodingSettings`, shared by everything that generates),
``loading`` (a model folder and an image opened, or one clear error), ``chat``
(:class:`ChatSession`, what ``llava-lite-chat`` talks to), ``answers`` (questions
file -> answers JSONL in LLaVA's ``model_vqa`` format, resumable), ``web`` (the Gradio demo
of ``llava-lite-web``; gradio is imported only when it is built). Evaluation
(:mod:`llava_lite.evaluation`) scores what these write.
"""

from llava_lite.inference.answers import AnswerStats, Question, generate_answers, read_answers, read_questions
from llava_lite.inference.chat import ChatSession
from llava_lite.inference.decoding import DecodingSettings
from llava_lite.inference.loading import load_model_dir

__all__ = [
    "AnswerStats",
    "ChatSession",
    "DecodingSettings",
    "Question",
    "generate_answers",
    "load_model_dir",
    "read_answers",
    "read_questions",
]
