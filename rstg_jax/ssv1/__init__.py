"""The Something-Something-v1 task: reader, TFDS builder, tf.data pipeline, ResNets, converter.

Importing this package imports no TensorFlow; only `tfds_builder` and `pipeline` do.
"""
