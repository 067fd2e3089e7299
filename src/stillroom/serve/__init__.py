"""`stillroom serve`: an OpenAI-compatible chat server for a local Hugging Face folder or GGUF causal LM."""
