"""Engine: the training loop, checkpoints, schedules, logs."""
