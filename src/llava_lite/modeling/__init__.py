"""The LLaVA model core: vision tower, projector, causal LM and image-token splicing.

Pure PyTorch + transformers; no Lightning or Hydra import.
"""

from llava_lite.modeling.llava import IGNORE_INDEX, LlavaModel
from llava_lite.modeling.llm import build_llm, load_tokenizer, prepare_tokenizer
from llava_lite.modeling.projector import PROJECTORS, build_projector, valid_projector_types
from llava_lite.modeling.tokenizer import build_tiny_tokenizer
from llava_lite.modeling.vision import VisionTower

__all__ = [
    "IGNORE_INDEX",
    "PROJECTORS",
    "LlavaModel",
    "VisionTower",
    "build_llm",
    "build_projector",
    "build_tiny_tokenizer",
    "load_tokenizer",
    "prepare_tokenizer",
    "valid_projector_types",
]
