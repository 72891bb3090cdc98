"""Files in and out: MR volumes and masks (:mod:`.images`), Slicer segmentation files
(:mod:`.segmentation`), CSV tables (:mod:`.tables`), atomic writing (:mod:`.atomic`), cohorts of
patients (:mod:`.cohort`) and the names of the outputs (:mod:`.names`)."""
