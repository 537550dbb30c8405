"""Where and how the computation runs: the device and the ranks of a torchrun job (`distributed`), the
precision (`precision`), and every random number generator (`rng`). Training and evaluation share them."""
