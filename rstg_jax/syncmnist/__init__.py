"""The SyncMNIST task: MNIST sources, the video generator, models, pre-training, figures."""
