"""Feature transforms: specs (`transforms.spec`), the preprocess job's configuration
(`transforms.config`), their tensorflow-transform ``preprocessing_fn`` (`transforms.tft_fn`, the
only module here that imports TensorFlow) and the fitted transforms applied online
(`transforms.fitted`, no TensorFlow).
"""
