"""The LLaVA model core: vision tower, projector, causal LM and image-token splicing.

Pure PyTorch + transformers; no Lightning or Hydra import. ``load_pretrained`` reads every
model folder format (``formats/``); ``LlavaModel.from_pretrained`` reads llava_lite's own.
"""

from llava_lite.config import IGNORE_INDEX
from llava_lite.modeling.formats.llava_hf import export_to_hf_llava, import_hf_llava
from llava_lite.modeling.formats.original_llava import import_original_llava
from llava_lite.modeling.llava import LlavaModel, splice_features
from llava_lite.modeling.llm import build_llm, check_packed_attention, load_tokenizer, prepare_tokenizer
from llava_lite.modeling.load import load_pretrained
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
    "check_packed_attention",
    "export_to_hf_llava",
    "import_hf_llava",
    "import_original_llava",
    "load_pretrained",
    "load_tokenizer",
    "prepare_tokenizer",
    "splice_features",
    "valid_projector_types",
]
