"""Distil a causal language model into a smaller one: sequence-level, token-level and on-policy.

`pipeline.run(recipe)` is the whole job (`stillroom distill --recipe llm`). The
pieces: `teacher` (loading, GGUF cache), `prompts`, `generate` (resumable
teacher generations and the sparse top-k cache), `student` (pruning, LoRA,
vocabulary check), `losses`, `train`, `evaluate`.
"""
