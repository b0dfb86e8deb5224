"""Post-hoc analysis over finished runs and sweeps: claims with intervals, comparisons, figures, the
trained policy as a generator."""
