"""midi stage."""
