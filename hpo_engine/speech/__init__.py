"""Speech front end: audio -> log-mel -> (streaming) Whisper encoder -> projector -> LLM-width embeddings."""
