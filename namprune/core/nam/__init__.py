"""NAM itself: the attention modules, attaching them to any model, folding them for inference, constant gates, the L1 sparsity penalty and planned shrinking."""
