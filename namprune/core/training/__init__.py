"""Training: the loop (fit, evaluate), what it saves to resume, what it tells the user, the optimizer and schedule, and DDP under torchrun."""
