"""Keras 3 integration: the only morph_net package that imports keras."""
