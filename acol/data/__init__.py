"""Dataset readers (ILSVRC, CUB, WSOL metadata), the synthetic generator, manifests and transforms."""
