"""WSOL evaluation primitives, NumPy only (no torch): score-map preparation, boxes, the contour kernels, metrics and the plain reference of Choe et al. 2020."""
