"""Training a bundle from slice labels (Yoo et al., sections 2.1-2.4 and 3.2), stage by stage in the
paper's order. :mod:`.run` holds a run (its directory, data, resume rules) and calls the stages;
:mod:`.loop` and :mod:`.checkpoint` the epoch loop and the files; one module per stage follows:
:mod:`.classifier`, :mod:`.seeds`, :mod:`.gan`, :mod:`.converter`, :mod:`.segmenters` (S0, then
S_US and S_OS), :mod:`.refinement`, :mod:`.bundle`, then the final segmenter (:mod:`.final`, its tiles from
:mod:`.final_data`), added to the written bundle. :mod:`.presets` holds the configurations and
:mod:`.slices` makes the training slices."""

#: The stages in the order they run. Each writes into ``<run>/stages/<stage>/`` and is complete once
#: its ``done.json`` exists; a stage's index seeds its initial weights and its data order.
STAGES = ("classifier", "seeds", "gan", "converter", "segmenter0", "refine", "segmenter_us", "segmenter_os",
          "segmenter_seed_only", "bundle", "final")
#: The stages of the fused pipeline, whose records the bundle stage collects.
PIPELINE_STAGES = STAGES[:STAGES.index("bundle")]
