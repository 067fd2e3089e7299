"""Distil a causal language model into a smaller one: sequence-level, token-level and on-policy.

`pipeline.run(recipe)` is the whole job (`stillroom distill --recipe llm`). The
pieces: `teacher` (loading, GGUF cache), `prompts`, `generate` (resumable
teacher generations and the sparse top-k cache), `student` (pruning, LoRA,
vocabulary check), `losses`, `train`, `evaluate`.
"""

import os

# On a shared CPU, OpenMP threads that spin while waiting for a busy core make every
# op many times slower (measured here: 2 threads 8x slower than with passive waiting).
# Read once when torch loads, so this only helps where torch is not imported yet.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
