"""The datasets service: streamed ingestion, validation, tokenizer statistics, splits."""
