"""One run, step by step: the replay API, the run page and flame graphs."""
