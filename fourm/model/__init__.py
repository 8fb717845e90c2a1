"""The FourM encoder-decoder: embeddings, transformer blocks, named sizes."""
