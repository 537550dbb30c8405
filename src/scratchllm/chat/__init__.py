"""Talking to a trained model: conversations, their generation, and the ways to reach them."""
