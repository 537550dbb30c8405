"""Stage 1: data. Sources, the size estimate, downloads, tokenizing and the token files, one module each."""
