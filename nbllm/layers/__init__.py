"""Building blocks shared by the model files: attention on the paged cache, rotary
embeddings, norms, activations, fused linear layers and the sampler."""
