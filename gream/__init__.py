"""The application layer: commands that combine the stages' outputs (comparisons of runs)."""
