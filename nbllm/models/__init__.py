"""Our own PyTorch model code, one file per architecture family, on the paged KV cache."""
