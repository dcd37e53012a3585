"""Cost estimates: what each production model part costs to evaluate, counted without weights or a GPU."""
