"""Whole-volume inference: the steps from channels to mask (:mod:`.pipeline`), the post-processing
of the mask (:mod:`.postprocess`), the result (:mod:`.result`) and the device (:mod:`.device`); the
settings of a run are :class:`WeakTumorSegLib.bundle.settings.InferenceSettings`."""
