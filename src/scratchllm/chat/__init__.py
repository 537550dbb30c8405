"""Stage 5, chat: conversations as training data (`data`), packed into batches (`loader`), supervised
fine-tuning with the pre-training Trainer (`sft`); their generation (`engine`), in the terminal
(`terminal`) and behind an OpenAI-compatible API and a page (`api`, `worker`, `server`)."""
