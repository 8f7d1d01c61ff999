"""Weight-only quantization on CPUs: GGUF blocks and float checkpoints into torch's packed int4 format.

Every quantized matrix is held as groups of 32 weights along the input dimension, each group
``w = scale * v + minimum`` with unsigned integers ``v`` (``groups.GroupQuant``). 4-bit groups
run on torch's CPU int4 kernel directly; 5- to 8-bit groups run on the same kernel as two
4-bit planes (``int4pack``). GGUF files are decoded block by block without a float copy
(``gguf_blocks``); ``loading`` builds a model with these weights.
"""
