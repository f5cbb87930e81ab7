"""Released LLaVA checkpoint formats, read into (and written from) :class:`LlavaModel`:
``llava_hf`` (transformers' ``LlavaForConditionalGeneration``) and ``original_llava``
(haotian-liu/LLaVA's ``LlavaLlamaForCausalLM``). ``llava_lite.modeling.load`` picks one."""
