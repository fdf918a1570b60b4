"""Tests of the nested many-in-one (elastic) models. Tiny parents come from the model and library test factories."""
