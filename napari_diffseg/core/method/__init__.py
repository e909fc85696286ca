"""The method: diffusion teacher, twin student, consistency targets, training runs, checkpoints."""
