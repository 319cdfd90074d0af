"""Image preprocessing: pure functions (run in worker processes) and the pool that runs them."""
