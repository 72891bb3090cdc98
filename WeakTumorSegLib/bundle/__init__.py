"""Model bundles: ``bundle.json`` read without PyTorch (:mod:`.info`), the inference settings a
bundle carries, resolved once with the user's overrides (:mod:`.settings`), the networks loaded and
verified (:mod:`.load`), bundles written and packed (:mod:`.save`)."""
