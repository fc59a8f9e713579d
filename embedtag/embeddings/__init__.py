"""Audio -> embeddings: the audio front end, the weights manager, the backbones and the extraction pipeline."""
