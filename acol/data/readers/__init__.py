"""Readers of the dataset layouts people download: ILSVRC, CUB-200-2011 and the WSOL metadata of Choe et al."""
