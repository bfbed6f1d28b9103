"""Training: the plan, the jitted step, feeds, checkpoints, run records and the loop."""
