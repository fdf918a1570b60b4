"""The pipeline: parent -> library -> search -> export, and the demo that composes it with baselines and GKD."""
