"""The networks of Yoo et al. (section 3.2): the classifier C (:mod:`.classifiers`), the DCGAN
generator and discriminators and the U-Net of the converter and the segmenters (:mod:`.dcgan`), the
final segmenter's U-Net with a classification branch (:mod:`.mixed`), and the registry that builds
them from a bundle's architecture names (:mod:`.registry`)."""
