"""DIR-Net: efficient 3D hand pose estimation with dynamic iterative refinement, built on :mod:`recurnet`."""
