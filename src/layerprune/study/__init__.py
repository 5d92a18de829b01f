"""Studies: one YAML → validated config → immutable plan of steps → resumable executor → report."""
