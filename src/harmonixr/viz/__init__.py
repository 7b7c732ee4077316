"""Pictures (docs/architecture.md): corpus maps, the tensor of a piece, first-layer filters,
training curves, and new pieces in the context of a corpus. Plotting libraries are imported
inside the functions that draw, so importing this package costs nothing."""
