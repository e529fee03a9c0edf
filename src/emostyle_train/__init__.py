"""emostyle-train: the paper's training recipes for the seven style networks and the emotion classifier.

``emostyle-train style`` trains one Johnson et al. style network (the project's
``TransformerNet``) with a VGG19 perceptual loss; ``emostyle-train classifier``
trains the paper's 21-layer Keras classifier; ``emostyle-train all`` trains
seven styles and the classifier and exports a bundle. Outputs are in the
formats ``emostyle-export`` reads unchanged. Nothing here is imported by the
runtime (``emostyle_rt``).
"""

__version__ = "0.1.0"
