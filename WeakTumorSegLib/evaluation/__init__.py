"""Evaluating a bundle against ground-truth masks (Yoo et al., section 4): Tables 2-6 and C.1."""
