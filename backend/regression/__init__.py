"""Statistical regression detection over workflow metrics (issue 4). The analysis core is pure numpy/scipy."""
