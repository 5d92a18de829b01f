"""Evaluation engine: tasks emit requests (`requests.py`), a backend answers them, metrics score them."""
