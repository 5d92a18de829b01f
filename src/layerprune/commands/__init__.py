"""CLI verbs: one module per verb (NAME, HELP, add_arguments, run). Discovered by `layerprune.cli`."""
