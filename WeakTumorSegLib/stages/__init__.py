"""The stages of Yoo et al. (section 2), one module each, with their losses beside them, in the
paper's order: the classifier (:mod:`.classifier`, 2.1), explanation seeds (:mod:`.seeds`, 2.1),
the healthy-image generator (:mod:`.healthy_gan`, 2.2.1) and the converter (:mod:`.converter`,
2.2.2), the segmenters (:mod:`.segmenters`, 2.3), seed refinement (:mod:`.refinement`, 2.4),
fusion of the under- and over-segmenting models (:mod:`.fusion`, 2.4) and the difference-score
filter (:mod:`.difference_filter`, 2.5)."""
