"""ttc: a compiler from PyTorch spiking neural networks to an SNN accelerator, with a bit-exact
instruction-level simulator. See README.md and docs/."""
