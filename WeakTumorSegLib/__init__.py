"""WeakTumorSegLib: weakly supervised brain-tumour segmentation from slice-level labels.

A pure-Python core (no Slicer imports) following Yoo et al., "A novel GAN-based paradigm for
weakly supervised brain tumor segmentation of MR images" (arXiv 2211.05269): classifier ->
explanation seeds -> healthy-image generator -> fused under/over-segmenting segmenters ->
difference-score filter. The subpackages follow a volume from file to mask: :mod:`.io` (files),
:mod:`.bundle` (model bundles), :mod:`.preprocessing`, :mod:`.networks`, :mod:`.stages` (one
module per stage of the paper, losses beside them), :mod:`.inference` (one function per step),
:mod:`.training` (the stages trained in the paper's order), :mod:`.evaluation` (the paper's
tables) and :mod:`.cli` (the ``weaktumorseg`` command). docs/method.md lists the modules in
the order a volume meets them.
"""

__version__ = "0.1.0"
