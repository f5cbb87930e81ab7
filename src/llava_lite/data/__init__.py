"""LLaVA instruction data: templates with exact labels, images, datasets, batching, DataModule."""

from llava_lite.config import IGNORE_INDEX
from llava_lite.data.bad_samples import BAD_SAMPLE_REASONS, BadSampleCounter, BadSampleError, SkipReport
from llava_lite.data.collate import LlavaCollator
from llava_lite.data.datamodule import LlavaDataModule
from llava_lite.data.dataset import LlavaDataset, LlavaStreamingDataset, build_sample
from llava_lite.data.packing import PackingCollator
from llava_lite.data.processor import LlavaProcessor
from llava_lite.data.sampler import ModalityLengthGroupedSampler, padding_fraction
from llava_lite.data.schema import RawRecord, normalize_conversation
from llava_lite.data.sources import expand_files, read_records
from llava_lite.data.tokenize import encode_conversation, expand_image_slots
from llava_lite.templates import TEMPLATES, get_template, prompt_for_generation

__all__ = [
    "BAD_SAMPLE_REASONS",
    "IGNORE_INDEX",
    "TEMPLATES",
    "BadSampleCounter",
    "BadSampleError",
    "LlavaCollator",
    "LlavaDataModule",
    "LlavaDataset",
    "LlavaProcessor",
    "LlavaStreamingDataset",
    "ModalityLengthGroupedSampler",
    "PackingCollator",
    "RawRecord",
    "SkipReport",
    "build_sample",
    "encode_conversation",
    "expand_files",
    "expand_image_slots",
    "get_template",
    "normalize_conversation",
    "padding_fraction",
    "prompt_for_generation",
    "read_records",
]
