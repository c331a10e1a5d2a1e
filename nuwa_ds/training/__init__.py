"""The training system behind ``nuwa-ds train``: distributed setup, DeepSpeed config, optimizer and
schedule, checkpoints, preemption, metrics. Model code never imports from here."""
