"""Structural pruning: the torch-pruning adapter, channel scores, how many channels each group loses, BatchNorm recalibration, and what a channel costs in MACs or latency."""
