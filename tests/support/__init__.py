"""Helpers the tests share: tiny adapter files and single-file checkpoints, written offline.

They live beside the tests, not in the runtime package, because the studio itself never needs them.
"""
