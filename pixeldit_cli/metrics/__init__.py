"""ADM-protocol evaluation in PyTorch: the FID Inception network, TF1 resize, npz I/O, and the scores."""
