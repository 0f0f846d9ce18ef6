"""The 3D track core, pure numpy/JAX: depth from stereo flow, query grids and pruning, lifting
to 3D, motion displacement, the semantic drift filter and the batched track optimiser."""
