"""Error analysis over the run store: trends, root-cause attribution (pure statistics)."""
