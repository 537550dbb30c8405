"""A run folder (`runs/NAME/`: config.toml, ckpt/step_N/, tokenizer/), the one place every stage that
reads a trained model goes through: the checkpoint format (`checkpoint`), reading a run or a
transformers folder (`load`), and writing a run as a transformers folder (`export`)."""
