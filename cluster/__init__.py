"""Composition: settings, the local stack, the supervisor, the Ray job, the CLI, benchmarks."""
