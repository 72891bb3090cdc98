"""Training a bundle from slice labels: presets, training slices, and the stages of Yoo et al. in
the paper's order, each writing a checkpoint so that a killed run resumes where it stopped."""
