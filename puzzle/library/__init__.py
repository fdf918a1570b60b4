"""The block library and how it is built.

library.py   ``BlockLibrary`` (the artifact every stage shares: layers, variants, metrics, costs, scenarios)
scenario.py  ``Scenario`` and the sane-range checks of every number a library holds
nvlabs.py    import of the NVlabs Puzzle demo format
space.py     the search space (which variants to build per layer), from YAML
prune.py     variant initialisation from the parent (activation-based importance)
distill.py   blockwise local distillation (BLD) of one variant
score.py     replace-one-block quality scores
cost.py      parameters, memory and measured latency per scenario
build.py     the build plan: prune -> distill -> score -> cost over an executor, resumable
prepare.py   its first stage: the parent's blocks and activations on distillation / held-out text
executor.py  local and Ray executors
store.py     keyed, idempotent result records
"""

from puzzle.library.library import LIBRARY_FILE, SCHEMA_VERSION, BlockLibrary, Layer, Scenario, Variant
from puzzle.library.nvlabs import import_nvlabs, load_any, parse_nvlabs_name

__all__ = [
    "LIBRARY_FILE",
    "SCHEMA_VERSION",
    "BlockLibrary",
    "Layer",
    "Scenario",
    "Variant",
    "import_nvlabs",
    "load_any",
    "parse_nvlabs_name",
]
