"""What the benchmarks (and the tests) share: engine runners in fresh processes, the pinned
side-by-side pair, phase profiles of the engine step, workloads and the scheduler built from
layer specs. Nothing here imports a benchmark script or anything under tests/."""
