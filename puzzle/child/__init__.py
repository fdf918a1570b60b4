"""A chosen child: assemble it from the library, evaluate it, heal it by GKD, compare it with baselines, export it.

assemble.py   the child model from the parent and the library's variant weights
evaluate.py   held-out perplexity
assess.py     KL to the parent, predicted and measured latency
gkd.py        global knowledge distillation from the parent
baselines.py  uniform width, depth pruning and greedy children from the same library
export.py     the Hugging Face directory with its manifest
"""
