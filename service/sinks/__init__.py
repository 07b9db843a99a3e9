"""Outputs fed by the run state's emissions: wandb, console, in-memory."""
