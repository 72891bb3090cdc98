"""Whole-volume inference: the settings of a run (:mod:`.settings`), the steps from channels to
mask (:mod:`.pipeline`), the post-processing of the mask (:mod:`.postprocess`) and the result
(:mod:`.result`). Importing this package imports nothing heavy; its modules do."""
