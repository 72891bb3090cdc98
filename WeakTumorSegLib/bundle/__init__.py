"""Model bundles: ``bundle.json`` read without PyTorch (:mod:`.info`), the networks loaded and
verified (:mod:`.load`), bundles written and packed (:mod:`.save`)."""
