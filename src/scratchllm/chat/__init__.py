"""Stage 5, chat: conversations as training data (`data`), packed into batches (`loader`), and
supervised fine-tuning with the pre-training Trainer (`sft`)."""
