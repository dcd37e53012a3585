"""Training a character LoRA: the job a trainer runs, our trainer, AI Toolkit's config, the pod's agent."""
