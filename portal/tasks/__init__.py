"""Background work with no billing rules: RQ queues and enqueue-after-commit (queues), the
task and schedule registries (registry), the schedule's lease and runs (scheduler), the
run wrapper (runs), what RQ knows (monitor), the scheduler loop (daemon) and the worker
class (worker). Services import this package; it imports no services."""
