"""Training: losses, optimizer, state, checkpoints, the trainer loop."""
