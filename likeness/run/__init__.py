"""What a run needs around its stages: interrupts, logs, the CLI's Prefect server, write checks, errors,
progress and the output folder."""
