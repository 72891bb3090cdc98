"""Training stage 2 and inference step 5, the explanation seeds (Yoo et al., section 2.1).

An explanation map of the classifier C marks where it sees tumour; its top becomes the positive
seeds S+ and its bottom the negative seeds S- (:mod:`.gates`). ``seeds.method`` picks the map:
RISE (:mod:`.rise`, the paper's), superpixel perturbation (:mod:`.superpixel`), Grad-CAM or ACAM
(:mod:`.cam`); :mod:`.methods` resolves the settings and dispatches.
"""

from .cam import class_maps, fit_attention
from .gates import (extend_negative_seeds, flair_above_quantile, gate_positive_seeds, normalize_maps, seeds_from_maps,
                    patient_levels, scoped_levels, slice_levels, volume_levels)
from .methods import SeedSettings, explanation_maps
from .rise import CPU_CHUNK, MaskSource, RiseConfig, classifier_rise, generate_masks, rise_maps
from .superpixel import SuperpixelConfig, classifier_superpixels, superpixel_relevance, superpixels

__all__ = ["CPU_CHUNK", "MaskSource", "RiseConfig", "SeedSettings", "SuperpixelConfig", "class_maps",
           "classifier_rise", "classifier_superpixels", "explanation_maps", "extend_negative_seeds", "fit_attention",
           "flair_above_quantile", "gate_positive_seeds", "generate_masks", "normalize_maps", "patient_levels",
           "rise_maps", "scoped_levels", "seeds_from_maps", "slice_levels", "superpixel_relevance", "superpixels",
           "volume_levels"]
