"""`memrl report`: MMER and evaluation tables, learning curves (`write`) and rliable's aggregate
statistics (`aggregate`). Imports neither Ray nor PyTorch."""
