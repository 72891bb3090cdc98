"""WeakTumorSegLib: weakly supervised brain-tumour segmentation from slice-level labels.

A pure-Python core (no Slicer imports) following Yoo et al., "A novel GAN-based paradigm for
weakly supervised brain tumor segmentation of MR images" (arXiv 2211.05269): classifier -> explanation seeds -> healthy
image generator -> fused under/over-segmenting segmenters -> difference-score filter.
Stages live in one module each: :mod:`.preprocess`, :mod:`.classifier`, :mod:`.seeds`,
:mod:`.generator`, :mod:`.tiling`, :mod:`.fusion`, :mod:`.filtering`, :mod:`.inference`,
:mod:`.bundle`, :mod:`.io`, :mod:`.cli`.
"""

__version__ = "0.1.0"
