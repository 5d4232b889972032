"""Data layer: bags, cohorts, readers, the simulated cohort."""
