"""From a volume to the patches the networks see (Yoo et al., section 3.1), in this order:
intensity normalisation (:mod:`.intensity`), the brain's bounding box and the working grid
(:mod:`.crop`), tiling into 128-pixel patches (:mod:`.tiling`). :mod:`.head` measures the depth
below the head's surface for the scalp margin."""
