"""Configuration and modeling code copied into every heterogeneous export (``trust_remote_code=True``).

``configuration_decilm`` / ``modeling_decilm``: the ``nemotron-nas`` (DeciLM) format; ``configuration_nemotron_h_puzzle``
/ ``modeling_nemotron_h_puzzle``: the ``nemotron_h_puzzle`` format; ``puzzle_modeling_utils``: their shared layers,
cache and generation glue. They depend only on torch and transformers, never on ``puzzle``.
"""
